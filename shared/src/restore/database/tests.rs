use super::*;

#[test]
fn toc_lines_parse_with_multi_word_kinds_and_spaces_in_names() {
    let toc = parse_toc(
        ";\n; Archive created at 2026-11-27\n8; 2615 17129 SCHEMA - auth postgres\n\
         2; 3079 17089 EXTENSION - pgcrypto \n\
         3382; 0 17130 TABLE DATA public Über Tabelle ✓ postgres\n\
         3391; 0 0 ACL public TABLE t supabase_admin\n\
         3393; 0 0 DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES postgres\n",
    );
    assert_eq!(toc.len(), 5);
    assert_eq!(
        (toc[0].desc.as_str(), toc[0].tag.as_str()),
        ("SCHEMA", "auth")
    );
    assert_eq!(
        (toc[1].desc.as_str(), toc[1].owner.as_str()),
        ("EXTENSION", "")
    );
    assert_eq!(toc[1].tag, "pgcrypto");
    assert_eq!(toc[2].desc, "TABLE DATA");
    assert_eq!(toc[2].tag, "Über Tabelle ✓");
    assert_eq!(toc[3].owner, "supabase_admin");
    assert_eq!(toc[4].desc, "DEFAULT ACL");
}

fn facts(roles: &[&str], extensions: &[&str]) -> TargetFacts {
    TargetFacts {
        version: "15.8".into(),
        major: 15,
        user: "supabase_admin".into(),
        superuser: true,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        available_extensions: extensions.iter().map(|e| e.to_string()).collect(),
        control_plane: false,
        supabase_schemas: true,
        user_relations: 3,
    }
}

#[test]
fn a_control_plane_is_never_written_and_a_stranger_only_by_force() {
    let mut target = facts(&[], &[]);
    assert_eq!(identity_problem(&target, false), None);
    target.supabase_schemas = false;
    let problem = identity_problem(&target, false).unwrap();
    assert!(problem.contains("forceRestore"), "{problem}");
    assert_eq!(identity_problem(&target, true), None);
    target.user_relations = 0;
    assert_eq!(identity_problem(&target, false), None);
    target.control_plane = true;
    assert!(
        identity_problem(&target, true)
            .unwrap()
            .contains("control plane")
    );
}

#[test]
fn missing_extensions_are_left_out_with_a_warning_and_missing_owners_stop_the_plan() {
    let toc = parse_toc(
        "2; 3079 1 EXTENSION - pg_graphql \n3; 0 0 COMMENT - EXTENSION pg_graphql \n\
         4; 1259 2 TABLE public t postgres\n5; 1259 3 TABLE auth users supabase_auth_admin\n",
    );
    let target = facts(&["postgres", "supabase_auth_admin"], &["pgcrypto"]);
    let plan = plan(&toc, &target, "", false).unwrap();
    assert!(!plan.main_list.contains("pg_graphql"));
    assert!(plan.main_list.contains("TABLE public t"));
    assert!(plan.warnings[0].contains("pg_graphql"));

    let lacking = facts(&["postgres"], &[]);
    let refused = super::plan(&toc, &lacking, "", false)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("supabase_auth_admin"), "{refused}");
    let forced = super::plan(&toc, &lacking, "", true).unwrap();
    assert!(forced.no_owner);
}

#[test]
fn user_roles_from_the_backup_are_created_when_missing() {
    let toc = parse_toc("4; 1259 2 TABLE public t app_owner\n");
    let roles = "CREATE ROLE app_owner;\nALTER ROLE app_owner WITH NOSUPERUSER LOGIN;\n\
                 CREATE ROLE present;\n";
    let plan = plan(&toc, &facts(&["present"], &[]), roles, false).unwrap();
    assert_eq!(
        plan.create_roles,
        "CREATE ROLE app_owner;\nALTER ROLE app_owner WITH NOSUPERUSER LOGIN;\n"
    );
    assert!(plan.warnings[0].contains("app_owner"));
}

#[test]
fn memberships_of_created_roles_come_back_without_their_grantor() {
    let toc = parse_toc("4; 1259 2 TABLE public t app_owner\n");
    let roles = "CREATE ROLE app_owner;\nCREATE ROLE \"Read Only\";\n\
                 GRANT \"Read Only\" TO app_owner GRANTED BY postgres;\n\
                 GRANT authenticated TO app_owner;\n\
                 GRANT ghost TO app_owner;\n\
                 GRANT authenticated TO present;\n";
    let plan = plan(
        &toc,
        &facts(&["present", "authenticated"], &[]),
        roles,
        false,
    )
    .unwrap();
    assert!(
        plan.create_roles
            .contains("GRANT \"Read Only\" TO app_owner;\n"),
        "{}",
        plan.create_roles
    );
    assert!(
        plan.create_roles
            .contains("GRANT authenticated TO app_owner;\n")
    );
    // A role the target lacks, and a membership of roles it had already.
    assert!(!plan.create_roles.contains("ghost"));
    assert!(!plan.create_roles.contains("TO present"));
}

#[test]
fn grants_to_missing_roles_are_skipped_and_counted() {
    let sql = "--\n-- Name: TABLE t; Type: ACL; Schema: public; Owner: postgres\n--\n\n\
               GRANT SELECT ON TABLE public.t TO anon;\n\
               GRANT ALL ON TABLE public.t TO \"Ghost Role\";\n\
               REVOKE ALL ON TABLE public.t FROM ghost;\n\
               GRANT SELECT ON TABLE public.t TO PUBLIC;\n\
               SET SESSION AUTHORIZATION ghost;\nGRANT SELECT ON TABLE public.u TO anon;\n\
               RESET SESSION AUTHORIZATION;\n\
               ALTER DEFAULT PRIVILEGES FOR ROLE ghost IN SCHEMA public GRANT ALL ON TABLES TO anon;\n";
    let known = |r: &str| r == "anon" || r == "postgres";
    let (kept, warnings) = filter_grants(sql, &known);
    assert!(kept.contains("TO anon;"));
    assert!(kept.contains("TO PUBLIC;"));
    assert!(!kept.contains("Ghost Role"));
    assert!(!kept.contains("ghost"));
    assert!(!kept.contains("public.u"));
    assert_eq!(
        warnings,
        vec![
            "Skipped 1 grant to role Ghost Role, which the target cluster lacks".to_string(),
            "Skipped 3 grants to role ghost, which the target cluster lacks".to_string(),
        ]
    );
}

#[test]
fn versions_give_their_major() {
    assert_eq!(major_of_version("15.8"), Some(15));
    assert_eq!(major_of_version("17.2 (Debian 17.2-1)"), Some(17));
    assert_eq!(major_of_version(""), None);
}
