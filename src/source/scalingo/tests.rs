use super::*;

fn backup(id: &str, status: &str, created_at: &str, size: Option<u64>) -> ApiBackup {
    ApiBackup {
        id: id.into(),
        name: Some(format!("name-{id}")),
        created_at: Some(created_at.into()),
        size,
        status: Some(status.into()),
    }
}

#[test]
fn created_at_with_millis_and_offset_is_read_as_utc() {
    let t = parse_created_at("2026-11-23T05:10:00.000+01:00").unwrap();
    assert_eq!(t.to_rfc3339(), "2026-11-23T04:10:00+00:00");
    let z = parse_created_at("2026-11-23T04:10:00.123Z").unwrap();
    assert_eq!(z.timestamp_subsec_millis(), 123);
    assert!(parse_created_at("yesterday").is_none());
}

#[test]
fn newest_done_wins_whatever_the_order() {
    let list = vec![
        backup("old", "done", "2026-11-21T05:10:00.000+01:00", Some(10)),
        backup(
            "running",
            "running",
            "2026-11-24T05:10:00.000+01:00",
            Some(0),
        ),
        backup("new", "done", "2026-11-23T05:10:00.000+01:00", Some(20)),
        backup("err", "error", "2026-11-23T23:10:00.000+01:00", None),
    ];
    let b = choose_newest_done(&list).unwrap();
    assert_eq!(b.id, "new");
    assert_eq!(b.name, "name-new");
    assert_eq!(b.size, Some(20));
}

#[test]
fn offsets_are_compared_as_instants() {
    // 05:10+01:00 is 04:10 UTC, earlier than 04:30Z.
    let list = vec![
        backup("a", "done", "2026-11-23T05:10:00.000+01:00", Some(1)),
        backup("b", "done", "2026-11-23T04:30:00.000+00:00", Some(1)),
    ];
    assert_eq!(choose_newest_done(&list).unwrap().id, "b");
}

#[test]
fn no_done_backup_is_none_and_described() {
    let list = vec![
        backup("r", "running", "2026-11-24T05:10:00.000+01:00", None),
        backup("e", "error", "2026-11-23T05:10:00.000+01:00", None),
        backup("p", "pending", "2026-11-22T05:10:00.000+01:00", None),
    ];
    assert!(choose_newest_done(&list).is_none());
    let d = describe_statuses(&list);
    assert!(d.contains("1 running") && d.contains("1 error") && d.contains("1 pending"));
}

#[test]
fn postgres_addon_by_provider_id_then_name() {
    let addon = |id: &str, pid: Option<&str>, name: Option<&str>| ApiAddon {
        id: id.into(),
        resource_id: None,
        addon_provider: Some(AddonProvider {
            id: pid.map(Into::into),
            name: name.map(Into::into),
        }),
    };
    let list = vec![
        addon("r", Some("redis"), Some("Redis")),
        addon("p", Some("postgresql"), Some("PostgreSQL")),
    ];
    assert_eq!(pick_postgres_addon(&list).unwrap().id, "p");
    let legacy = vec![
        addon("r", None, Some("Redis")),
        addon("q", None, Some("postgreSQL")),
    ];
    assert_eq!(pick_postgres_addon(&legacy).unwrap().id, "q");
    assert!(pick_postgres_addon(&list[..1]).is_none());
}

#[test]
fn error_detail_is_short_and_not_json_dependent() {
    assert_eq!(body_detail(b"Retry later"), ": Retry later");
    assert_eq!(
        body_detail(br#"{"error":"not found","resource":"app"}"#),
        ": not found"
    );
    assert_eq!(body_detail(b""), "");
    assert!(body_detail(&[b'x'; 5000]).len() < MAX_DETAIL + 5);
}

#[test]
fn redacted_url_keeps_path_only() {
    let u = DownloadUrl(Secret::new(
        "https://db-api.osc-fr1.scalingo.com/api/databases/ad-1/backups/b/download?token=SECRET",
    ));
    assert_eq!(
        u.redacted(),
        "https://db-api.osc-fr1.scalingo.com/api/databases/ad-1/backups/b/download"
    );
    assert!(!format!("{u:?}").contains("SECRET"));
}
