//! The API client against the fake Scalingo: the right backup, and the right kind of error.

use std::time::Duration;

use replicator::error::{FailureKind, StepError};
use replicator::source::scalingo::ScalingoError;

use crate::common::fake_scalingo::*;

/// Printed so that `--nocapture` shows what a user would read.
fn message(e: &StepError) -> String {
    eprintln!("message: {e}");
    e.to_string()
}

fn assert_permanent(e: &StepError) {
    assert!(!e.is_transient(), "expected permanent, got {e:?}");
}

fn assert_transient(e: &StepError) {
    assert!(e.is_transient(), "expected transient, got {e:?}");
}

#[tokio::test]
async fn chooses_the_newest_done_backup_not_the_newer_running_one() {
    let fake = FakeScalingo::start(FakeConfig::default());
    let backup = fake.client().newest_done_backup().await.unwrap();

    assert_eq!(backup.id, DONE_BACKUP_ID);
    assert_eq!(backup.name, "20261123051000_my_app_4553");
    assert_eq!(backup.size, Some(fake.archive_len()));
    assert_eq!(
        backup.created_at.unwrap().to_rfc3339(),
        "2026-11-23T04:10:00+00:00"
    );
}

#[tokio::test]
async fn sends_each_credential_where_the_api_expects_it() {
    let fake = FakeScalingo::start(FakeConfig::default());
    let client = fake.client();
    let backup = client.newest_done_backup().await.unwrap();
    client.download_url(&backup.id).await.unwrap();

    let records = fake.records();
    let auth_of = |route: Route| -> Vec<String> {
        records
            .authorizations
            .iter()
            .filter(|(r, _)| *r == route)
            .map(|(_, a)| a.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(
        auth_of(Route::Exchange),
        vec!["Basic OnRrLXVzLWZha2UtMDEyMzQ1Njc4OWFiY2RlZg=="]
    );
    assert!(
        auth_of(Route::Addons)
            .iter()
            .all(|a| a.starts_with("Bearer eyJ"))
    );
    assert!(
        auth_of(Route::AddonToken)
            .iter()
            .all(|a| a.starts_with("Bearer eyJ"))
    );
    assert!(
        auth_of(Route::Backups)
            .iter()
            .all(|a| a.starts_with("Bearer db-token-"))
    );
    assert!(
        auth_of(Route::Archive)
            .iter()
            .all(|a| a.starts_with("Bearer db-token-"))
    );
    // One exchange, one addon lookup; a database token per call.
    assert_eq!(records.count(Route::Exchange), 1);
    assert_eq!(records.count(Route::Addons), 1);
    assert_eq!(records.count(Route::AddonToken), 2);
}

#[tokio::test]
async fn download_url_points_at_the_backup_and_hides_its_token() {
    let fake = FakeScalingo::start(FakeConfig::default());
    let url = fake.client().download_url(DONE_BACKUP_ID).await.unwrap();
    assert!(url.0.expose().contains("?token="));
    assert_eq!(
        url.redacted(),
        format!(
            "{}/api/databases/{POSTGRES_ADDON_ID}/backups/{DONE_BACKUP_ID}/download",
            fake.url()
        )
    );
    assert!(!format!("{url:?}").contains("token="));
}

#[tokio::test]
async fn a_bad_api_token_is_permanent_and_names_the_variable() {
    let fake = FakeScalingo::start(FakeConfig::default());
    let e = fake
        .client_for(APP, "tk-us-wrong-token")
        .newest_done_backup()
        .await
        .unwrap_err();
    assert_permanent(&e);
    let m = message(&e);
    assert!(m.contains("SCALINGO_API_TOKEN"), "{m}");
    assert!(
        m.contains("401") && m.contains("/v1/tokens/exchange"),
        "{m}"
    );
    assert!(!m.contains("tk-us-wrong-token"), "the token leaked: {m}");
    assert_eq!(fake.records().count(Route::Exchange), 1);
}

#[tokio::test]
async fn an_expired_bearer_is_exchanged_again_once() {
    let fake = FakeScalingo::start(FakeConfig::default());
    let client = fake.client();
    client.newest_done_backup().await.unwrap();
    fake.faults(|f| f.expire_bearer = Some(Times::Next(1)));

    client.download_url(DONE_BACKUP_ID).await.unwrap();
    assert_eq!(fake.records().count(Route::Exchange), 2);
}

#[tokio::test]
async fn a_401_after_a_fresh_exchange_is_permanent() {
    let fake = FakeScalingo::start(FakeConfig::default());
    let client = fake.client();
    client.newest_done_backup().await.unwrap();
    fake.faults(|f| {
        f.error = Some(ErrorFault {
            route: Some(Route::AddonToken),
            status: 401,
            retry_after: None,
            times: Times::Always,
        })
    });

    let e = client.download_url(DONE_BACKUP_ID).await.unwrap_err();
    assert_permanent(&e);
    assert!(message(&e).contains("SCALINGO_API_TOKEN"), "{e}");
    // The cached bearer was given one fresh exchange, not more.
    assert_eq!(fake.records().count(Route::Exchange), 2);
}

#[tokio::test]
async fn a_429_is_transient_and_carries_retry_after() {
    let fake = FakeScalingo::start(FakeConfig::default());
    fake.faults(|f| {
        f.error = Some(ErrorFault {
            route: Some(Route::Backups),
            status: 429,
            retry_after: Some(7),
            times: Times::Next(1),
        })
    });
    let client = fake.client();
    let e = client.newest_done_backup().await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Transient, "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    // The client's own error reaches the caller whole, not only its message.
    assert!(e.downcast_ref::<ScalingoError>().is_some(), "{e:?}");
    assert!(message(&e).contains("429"), "{e}");
    // The fault is over: the next attempt works.
    assert_eq!(
        client.newest_done_backup().await.unwrap().id,
        DONE_BACKUP_ID
    );
}

#[tokio::test]
async fn server_errors_are_transient() {
    for status in [500, 502, 503] {
        let fake = FakeScalingo::start(FakeConfig::default());
        fake.faults(|f| {
            f.error = Some(ErrorFault {
                route: None,
                status,
                retry_after: None,
                times: Times::Next(1),
            })
        });
        let e = fake.client().newest_done_backup().await.unwrap_err();
        assert_transient(&e);
        assert!(message(&e).contains(&status.to_string()), "{e}");
    }
}

#[tokio::test]
async fn an_unknown_app_is_permanent_and_names_app_and_variable() {
    let fake = FakeScalingo::start(FakeConfig::default());
    let e = fake
        .client_for("no-such-app", API_TOKEN)
        .newest_done_backup()
        .await
        .unwrap_err();
    assert_permanent(&e);
    let m = message(&e);
    assert!(
        m.contains("no-such-app") && m.contains("SCALINGO_APP"),
        "{m}"
    );
    assert!(m.contains("404"), "{m}");
}

#[tokio::test]
async fn an_app_without_postgresql_is_permanent() {
    let fake = FakeScalingo::start(FakeConfig::default());
    fake.faults(|f| f.no_postgres_addon = true);
    let e = fake.client().newest_done_backup().await.unwrap_err();
    assert_permanent(&e);
    let m = message(&e);
    assert!(m.contains("no PostgreSQL addon") && m.contains(APP), "{m}");
    assert!(m.contains("redis"), "{m}");
}

#[tokio::test]
async fn no_done_backup_is_permanent_and_says_what_was_seen() {
    let fake = FakeScalingo::start(FakeConfig::default());
    fake.faults(|f| f.only_unfinished_backups = true);
    let e = fake.client().newest_done_backup().await.unwrap_err();
    assert_permanent(&e);
    let m = message(&e);
    assert!(m.contains("1 running") && m.contains("1 error"), "{m}");
    assert!(m.contains(POSTGRES_ADDON_ID), "{m}");
}

#[tokio::test]
async fn an_unreachable_host_is_transient_and_leaks_nothing() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = format!("http://127.0.0.1:{port}");
    let endpoints = replicator::source::scalingo::Endpoints {
        auth: origin.clone(),
        api: origin.clone(),
        db: origin,
    };
    let client = replicator::source::scalingo::ScalingoClient::new(
        endpoints,
        APP.into(),
        replicator::secret::Secret::new(API_TOKEN),
    );
    let e = client.newest_done_backup().await.unwrap_err();
    assert_transient(&e);
    assert!(!message(&e).contains(API_TOKEN), "{e}");
}

#[tokio::test]
async fn asking_for_a_backup_that_is_not_done_is_permanent() {
    let fake = FakeScalingo::start(FakeConfig::default());
    let e = fake
        .client()
        .download_url(RUNNING_BACKUP_ID)
        .await
        .unwrap_err();
    assert_permanent(&e);
    assert!(message(&e).contains("400"), "{e}");
}
