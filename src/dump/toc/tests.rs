use super::*;

const LIST: &str = ";\n;     Dumped from database version: 15.18\n;\n\
        220; 1259 16414 TABLE public Answers postgres\n\
        221; 1259 16417 TABLE public a b c postgres\n\
        215; 1259 16386 TABLE public answers postgres\n\
        217; 1259 16395 TABLE public element-answers postgres\n\
        218; 1259 16406 TABLE public my table postgres\n\
        219; 1259 16411 TABLE public we\"ird postgres\n\
        3382; 0 16414 TABLE DATA public Answers postgres\n\
        3383; 0 16417 TABLE DATA public a b c postgres\n\
        3377; 0 16386 TABLE DATA public answers postgres\n\
        3379; 0 16395 TABLE DATA public element-answers postgres\n\
        3380; 0 16406 TABLE DATA public my table postgres\n\
        3381; 0 16411 TABLE DATA public we\"ird postgres\n\
        3226; 2606 16393 CONSTRAINT public answers answers_pkey postgres\n\
        3230; 2606 16410 CONSTRAINT public my table my table_pkey postgres\n\
        3232; 2606 16401 FK CONSTRAINT public element-answers element-answers_answer_id_fkey postgres\n\
        3233; 2606 16421 FK CONSTRAINT public my table fk z postgres\n\
        2; 3079 16385 EXTENSION - pgcrypto \n";

#[test]
fn reads_names_with_spaces_quotes_and_hyphens() {
    let toc = Toc::parse(LIST);
    assert_eq!(toc.entries().count(), 17);
    let e = toc.table_data("public", "my table").unwrap();
    assert_eq!((e.id, e.owner.as_str()), (3380, "postgres"));
    assert_eq!(toc.table_data("public", "we\"ird").unwrap().id, 3381);
    assert_eq!(
        toc.table_data("public", "element-answers").unwrap().id,
        3379
    );
    let fk = toc.entries().find(|e| e.id == 3233).unwrap();
    assert_eq!(fk.desc, "FK CONSTRAINT");
    assert_eq!(fk.table.as_deref(), Some("my table"));
    assert_eq!(fk.name, "fk z");
    let pk = toc.entries().find(|e| e.id == 3230).unwrap();
    assert_eq!(
        (pk.table.as_deref(), pk.name.as_str()),
        (Some("my table"), "my table_pkey")
    );
    let ext = toc.entries().find(|e| e.id == 2).unwrap();
    assert_eq!(
        (ext.desc.as_str(), ext.schema.as_str(), ext.tag.as_str()),
        ("EXTENSION", "-", "pgcrypto")
    );
}

#[test]
fn reads_the_header_and_sorts_entries_into_sections() {
    let toc = Toc::parse(
        ";\n;     Dumped from database version: 12.4\n;     Dumped by pg_dump version: 12.5\n;\n\
             3600; 0 0 COMMENT public TABLE answers postgres\n",
    );
    assert_eq!(
        (toc.dumped_from(), toc.dumped_by()),
        (Some("12.4"), Some("12.5"))
    );
    assert_eq!(Toc::parse(LIST).dumped_by(), None);
    let sections: Vec<(u32, TocSection)> = Toc::parse(LIST)
        .entries()
        .filter(|e| [215, 3377, 3232, 3226].contains(&e.id))
        .map(|e| (e.id, e.section()))
        .collect();
    assert_eq!(
        sections,
        vec![
            (215, TocSection::PreData),
            (3377, TocSection::Data),
            (3226, TocSection::PostData),
            (3232, TocSection::PostData),
        ]
    );
    assert_eq!(
        toc.entries().next().map(TocEntry::section),
        Some(TocSection::None)
    );
}

#[test]
fn a_written_list_reads_back_without_what_it_comments_out() {
    let toc = Toc::parse(LIST);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restore.list");
    toc.write_list(&path, &HashSet::from([3377, 3232])).unwrap();
    let back = Toc::read_list(&path).unwrap();
    assert_eq!(back.entries().count(), toc.entries().count() - 2);
    assert!(back.entries().all(|e| e.id != 3377 && e.id != 3232));
    let missing = Toc::read_list(&dir.path().join("nope.list")).unwrap_err();
    assert!(missing.to_string().contains("nope.list"), "{missing}");
}

#[test]
fn matching_is_exact() {
    let toc = Toc::parse(LIST);
    let names = parse_table_list("answers, nope").unwrap();
    let plan = plan_exclusion(&toc, &names, &HashMap::new());
    // Neither `element-answers` nor `Answers`.
    assert_eq!(plan.skip, HashSet::from([3377]));
    assert_eq!(plan.unmatched, vec!["nope".to_string()]);
}

#[test]
fn foreign_keys_to_an_excluded_table_are_left_out() {
    let toc = Toc::parse(LIST);
    let fks = HashMap::from([
        (3232, ("public".to_string(), "answers".to_string())),
        (3233, ("public".to_string(), "answers".to_string())),
    ]);
    let plan = plan_exclusion(&toc, &["answers".into()], &fks);
    assert_eq!(plan.skip, HashSet::from([3377, 3232, 3233]));
    assert!(plan.dropped_foreign_keys.contains(&(
        "my table".into(),
        "fk z".into(),
        "answers".into()
    )));
}

#[test]
fn a_table_the_dump_holds_without_rows_is_excluded_and_its_foreign_keys_with_it() {
    // `pg_dump --exclude-table-data=public."answers"` (a live source): the table, no rows.
    let list: String = LIST
        .lines()
        .filter(|l| !l.starts_with("3377;"))
        .map(|l| format!("{l}\n"))
        .collect();
    let toc = Toc::parse(&list);
    let fks = HashMap::from([(3233, ("public".to_string(), "answers".to_string()))]);
    let plan = plan_exclusion(&toc, &["answers".into(), "nope".into()], &fks);
    assert_eq!(plan.excluded, vec!["answers".to_string()]);
    assert_eq!(plan.unmatched, vec!["nope".to_string()]);
    assert_eq!(plan.skip, HashSet::from([3233]));
}

#[test]
fn the_list_comments_out_what_is_skipped_only() {
    let toc = Toc::parse(LIST);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l/restore.list");
    toc.write_list(&path, &HashSet::from([3377])).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let commented: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(";excluded"))
        .collect();
    assert_eq!(
        commented,
        vec![";excluded by replicator: 3377; 0 16386 TABLE DATA public answers postgres"]
    );
    assert_eq!(text.lines().count(), LIST.lines().count());
}

#[test]
fn parses_the_exclusion_variable() {
    assert_eq!(
        parse_table_list(
            " knowledge-elements ,\"My, table\",\"we\"\"ird\",public.x,\"public\".\"Y\""
        )
        .unwrap(),
        vec!["knowledge-elements", "My, table", "we\"ird", "x", "Y"]
    );
    assert_eq!(parse_table_list("").unwrap(), Vec::<String>::new());
    assert!(parse_table_list("a,,b").is_err());
    assert!(parse_table_list("\"open").is_err());
    assert!(parse_table_list("\"a\" b").is_err());
}

#[test]
fn reads_foreign_keys_of_partitioned_tables_and_other_schemas() {
    let sql = "ALTER TABLE ONLY public.answers\n    ADD CONSTRAINT \"answers_x_fkey\" FOREIGN KEY (\"ke Id\") REFERENCES public.\"knowledge-elements\"(id);\n\n\
            ALTER TABLE public.\"Events\"\n    ADD CONSTRAINT \"Events_userId_fkey\" FOREIGN KEY (\"userId\") REFERENCES public.\"User\"\"Accounts\"(id);\n\
            ALTER TABLE ONLY public.\"User\"\"Accounts\"\n    ADD CONSTRAINT u_fkey FOREIGN KEY (org) REFERENCES public.orgs(id) ON DELETE CASCADE;\n\
            ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\
            ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_fk FOREIGN KEY (o) REFERENCES other.o(id);\n";
    let fks = parse_foreign_keys(sql);
    assert!(fks.iter().all(|f| f.schema == "public" && f.id.is_none()));
    let pairs: Vec<(&str, &str, &str)> = fks
        .iter()
        .map(|f| {
            (
                f.table.as_str(),
                f.ref_schema.as_str(),
                f.ref_table.as_str(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("answers", "public", "knowledge-elements"),
            ("Events", "public", "User\"Accounts"),
            ("User\"Accounts", "public", "orgs"),
            ("t", "other", "o"),
        ]
    );
}

#[test]
fn reads_what_foreign_keys_reference() {
    let sql = "--\n-- TOC entry 3232 (class 2606 OID 16401)\n-- Name: x\n--\n\n\
            ALTER TABLE ONLY public.\"element-answers\"\n    ADD CONSTRAINT \"element-answers_answer_id_fkey\" FOREIGN KEY (answer_id) REFERENCES public.answers(id);\n\n\
            --\n-- TOC entry 3226 (class 2606 OID 16393)\n--\n\nALTER TABLE ONLY public.answers\n    ADD CONSTRAINT answers_pkey PRIMARY KEY (id);\n\
            --\n-- TOC entry 3233 (class 2606 OID 16421)\n--\n\nALTER TABLE ONLY public.\"my table\"\n    ADD CONSTRAINT \"fk z\" FOREIGN KEY (id, \"o ) REFERENCES x\") REFERENCES public.\"Answers\"(id);\n";
    let fks = parse_foreign_keys(sql);
    assert_eq!(fks.len(), 2, "{fks:?}");
    assert_eq!(
        fks[0],
        ForeignKey {
            id: Some(3232),
            schema: "public".into(),
            table: "element-answers".into(),
            ref_schema: "public".into(),
            ref_table: "answers".into(),
        }
    );
    assert_eq!(
        (fks[1].id, fks[1].table.as_str(), fks[1].ref_table.as_str()),
        (Some(3233), "my table", "Answers")
    );
}
