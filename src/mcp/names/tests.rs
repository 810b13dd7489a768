//! Names: the exposing scheme, tables, collisions, URI routing, filters, hostile input.
use super::glob::glob_match;
use super::*;
use proptest::prelude::*;

fn namer(prefix: &str) -> Namer {
    Namer::new(Some(prefix), SEPARATOR, DEFAULT_MAX_LEN).expect("valid prefix")
}

fn plain() -> Namer {
    Namer::new(None, SEPARATOR, DEFAULT_MAX_LEN).expect("valid")
}

fn valid(name: &str, max: usize) -> bool {
    is_valid_name(name, max)
}

#[test]
fn short_valid_names_are_prefixed_as_they_are() {
    assert_eq!(
        namer("github").expose("create_issue"),
        ("github__create_issue".to_owned(), Rewrite::None)
    );
    assert_eq!(
        plain().expose("create_issue"),
        ("create_issue".to_owned(), Rewrite::None)
    );
    // Dots are kept: the spec allows them (a prefix cannot add one unless it has one).
    assert_eq!(namer("fs").expose("read.file").0, "fs__read.file");
    assert_eq!(exposed_name("a", "-", "b", 64), "a-b");
}

#[test]
fn long_names_are_shortened_to_the_maximum_with_a_hash() {
    let long = "x".repeat(100);
    let (e, why) = namer("github").expose(&long);
    assert_eq!(why, Rewrite::TooLong);
    assert_eq!(e.len(), DEFAULT_MAX_LEN);
    assert!(e.starts_with("github__xxxx"), "{e}");
    assert!(looks_hashed(&e), "{e}");
    // The full original decides the hash: same first 52 characters, different names.
    let other = format!("{}y", "x".repeat(99));
    assert_ne!(namer("github").expose(&other).0, e);
    // Exactly at the maximum: kept.
    let fits = "y".repeat(DEFAULT_MAX_LEN - "github__".len());
    assert_eq!(namer("github").expose(&fits).1, Rewrite::None);
    let over = "y".repeat(DEFAULT_MAX_LEN - "github__".len() + 1);
    assert_eq!(namer("github").expose(&over).1, Rewrite::TooLong);
    // A megabyte of anything: still one valid name of the maximum length.
    for huge in [
        "é".repeat(1 << 19),
        "a".repeat(1 << 20),
        "\u{0}".repeat(1 << 20),
    ] {
        let (e, _) = namer("github").expose(&huge);
        assert!(
            valid(&e, DEFAULT_MAX_LEN) && e.len() == DEFAULT_MAX_LEN,
            "{e}"
        );
    }
}

#[test]
fn the_shortening_is_stable_across_releases() {
    // The hash is part of what clients see and store (allow lists, prompts): changing the
    // scheme renames tools. This pins it.
    let (e, _) = exposed_with_reason("gh", "__", &"a".repeat(70), 64);
    assert_eq!(e.len(), 64);
    assert_eq!(&e[..52], &format!("gh__{}", "a".repeat(48)));
    assert_eq!(e, format!("gh__{}--g2anwtezki", "a".repeat(48)));
    assert_eq!(exposed_name("", "", "héllo", 64), "h_llo--4lu2idhoxq");
}

#[test]
fn characters_outside_the_set_are_mapped_and_hashed() {
    let (e, why) = plain().expose("héllo wörld");
    assert_eq!(why, Rewrite::Unallowed);
    assert!(e.starts_with("h_llo_w_rld--"), "{e}");
    assert!(valid(&e, 64));
    // Two originals that map to the same characters stay apart.
    assert_ne!(plain().expose("a b").0, plain().expose("a/b").0);
    // A mapped name never equals the plain name it resembles.
    assert_ne!(plain().expose("a b").0, "a_b");
}

#[test]
fn empty_names_get_a_valid_hashed_name() {
    let (e, why) = plain().expose("");
    assert_eq!(why, Rewrite::Empty);
    assert!(valid(&e, 64) && e.starts_with("--"), "{e}");
    let (p, _) = namer("x").expose("");
    assert!(p.starts_with("x__--"), "{p}");
}

#[test]
fn a_plain_name_never_equals_a_hashed_one() {
    // An upstream (hostile or unlucky) lists a name spelled like another's shortened form.
    let long = "t".repeat(80);
    let (hashed, _) = namer("a").expose(&long);
    let forged = hashed.strip_prefix("a__").expect("prefixed");
    let (e, why) = namer("a").expose(forged);
    assert_eq!(why, Rewrite::LooksHashed);
    assert_ne!(e, hashed);
    // Natural names that merely contain `--` are left alone.
    assert_eq!(plain().expose("dry--run").1, Rewrite::None);
    assert_eq!(plain().expose("x--abcdefghi").1, Rewrite::None); // 9 characters
    assert_eq!(plain().expose("x--abcdefghi8").1, Rewrite::None); // 8 is not base32
    assert_eq!(plain().expose("x--abcdefghij").1, Rewrite::LooksHashed);
}

#[test]
fn prefixes_that_could_confuse_upstreams_are_refused() {
    use NamerError::*;
    // `x` + `a__b` and `x__a` + `b` would both be `x__a__b`.
    assert_eq!(Namer::new(Some("x__a"), "__", 64), Err(AmbiguousPrefix));
    assert_eq!(Namer::new(Some("x_"), "__", 64), Err(AmbiguousPrefix));
    assert_eq!(Namer::new(Some("x-"), "-", 64), Err(AmbiguousPrefix));
    assert_eq!(Namer::new(Some("a-b"), "-", 64), Err(AmbiguousPrefix));
    assert!(Namer::new(Some("x"), "__", 64).is_ok());
    assert!(Namer::new(Some("_x"), "__", 64).is_ok());
    assert!(Namer::new(Some("x.y-z"), "__", 64).is_ok());
    assert_eq!(Namer::new(Some(""), "__", 64), Err(EmptyPrefix));
    assert_eq!(Namer::new(Some("a b"), "__", 64), Err(PrefixChars));
    assert_eq!(Namer::new(Some("a"), "", 64), Err(SeparatorChars));
    assert_eq!(Namer::new(Some("a"), ".", 64), Err(SeparatorChars));
    assert_eq!(Namer::new(Some("a"), "__", 15), Err(MaxLen(15)));
    assert_eq!(Namer::new(None, "", 129), Err(MaxLen(129)));
    // prefix + separator must leave room for a character before the hash suffix.
    assert_eq!(
        Namer::new(Some(&"p".repeat(50)), "__", 64),
        Err(PrefixTooLong)
    );
    assert!(Namer::new(Some(&"p".repeat(49)), "__", 64).is_ok());
    let long = Namer::new(Some(&"p".repeat(49)), "__", 64).expect("fits");
    assert!(long
        .expose(&"n".repeat(99))
        .0
        .starts_with(&format!("{}__n", "p".repeat(49))));
    // Defaults.
    let d = Namer::for_upstream("github", true).expect("valid");
    assert_eq!(
        (d.prefix(), d.separator(), d.max_len()),
        (Some("github"), "__", 64)
    );
    assert_eq!(
        Namer::for_upstream("github", false)
            .expect("valid")
            .prefix(),
        None
    );
    assert_eq!(Namer::for_upstream("a__b", true), Err(AmbiguousPrefix));
    assert!(AmbiguousPrefix.to_string().contains("separator"));
}

#[test]
fn overlapping_prefixes_are_found_before_any_list_is_known() {
    let n = |p: Option<&str>, sep: &str| Namer::new(p, sep, 64).expect("valid");
    let namers = [
        n(Some("gh"), "__"),
        n(Some("fs"), "__"),
        n(Some("gh"), "__"),
        n(Some("a"), "__"),
        n(Some("a"), "_"),
        n(Some("ab"), "__"),
    ];
    assert_eq!(prefix_overlaps(&namers), [(0, 2), (3, 4)]);
    assert_eq!(
        prefix_overlaps(&[n(None, ""), n(Some("x"), "__")]),
        [(0, 1)]
    );
    assert_eq!(prefix_overlaps(&[n(None, ""), n(None, "")]), [(0, 1)]);
    assert!(prefix_overlaps(&[n(None, "")]).is_empty());
    assert!(prefix_overlaps(&[n(Some("x"), "__"), n(Some("xa"), "__")]).is_empty());
}

#[test]
fn table_routes_both_ways_in_listing_order() {
    let (gh, fs) = (namer("gh"), namer("fs"));
    let (t, problems) = NameTable::build(
        &[
            UpstreamNames {
                namer: &gh,
                names: &["search", "create_issue"],
            },
            UpstreamNames {
                namer: &fs,
                names: &["read", "search"],
            },
        ],
        &Filter::default(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let listed: Vec<&str> = t.entries().iter().map(|e| &*e.exposed).collect();
    assert_eq!(
        listed,
        ["gh__search", "gh__create_issue", "fs__read", "fs__search"]
    );
    assert_eq!(t.resolve("fs__search"), Some((1, "search")));
    assert_eq!(t.resolve("gh__search"), Some((0, "search")));
    assert_eq!(t.exposed(1, "read"), Some("fs__read"));
    // Unknown names are unknown, never the nearest match.
    for probe in [
        "search",
        "gh__",
        "gh__searc",
        "GH__search",
        "fs__search ",
        "",
        "gh__read",
    ] {
        assert_eq!(t.resolve(probe), None, "{probe:?}");
    }
    assert_eq!(t.exposed(2, "read"), None);
    assert_eq!(t.exposed(0, "read"), None);
    assert_eq!(t.resolve(&"a".repeat(1 << 20)), None);
    assert_eq!(t.len(), 4);
    assert_eq!(t.rewritten().count(), 0);
}

#[test]
fn collisions_are_reported_and_the_first_kept() {
    // Unprefixed upstreams on one server (configured so): the same name from both.
    let (a, b) = (plain(), plain());
    let (t, problems) = NameTable::build(
        &[
            UpstreamNames {
                namer: &a,
                names: &["echo", "add"],
            },
            UpstreamNames {
                namer: &b,
                names: &["echo", "sub"],
            },
        ],
        &Filter::default(),
    );
    assert_eq!(t.resolve("echo"), Some((0, "echo")));
    assert_eq!(t.exposed(1, "echo"), None);
    assert_eq!(t.resolve("sub"), Some((1, "sub")));
    assert_eq!(
        problems,
        [NameProblem::Collision {
            exposed: "echo".into(),
            kept: (0, "echo".into()),
            dropped: (1, "echo".into()),
        }]
    );
    assert!(problems[0].to_string().contains("\"echo\""));
}

#[test]
fn names_containing_the_separator_cannot_be_confused() {
    // With validated prefixes, `x` + `a__b` cannot meet anything of another prefix.
    let (x, y) = (namer("x"), namer("xa"));
    let (t, problems) = NameTable::build(
        &[
            UpstreamNames {
                namer: &x,
                names: &["a__b", "__c", "_d"],
            },
            UpstreamNames {
                namer: &y,
                names: &["_b", "b", "__b"],
            },
        ],
        &Filter::default(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(t.resolve("x__a__b"), Some((0, "a__b")));
    assert_eq!(t.resolve("x____c"), Some((0, "__c")));
    assert_eq!(t.resolve("x___d"), Some((0, "_d")));
    assert_eq!(t.resolve("xa___b"), Some((1, "_b")));
    assert_eq!(t.resolve("xa__b"), Some((1, "b")));
    // Without the prefix check (the free function), `x` + `a__b` and `x__a` + `b` meet: the
    // table catches it.
    assert_eq!(
        exposed_name("x", "__", "a__b", 64),
        exposed_name("x__a", "__", "b", 64)
    );
    let bad = Namer {
        prefix: Some("x__a".into()),
        separator: "__".into(),
        max_len: 64,
    };
    let (t, problems) = NameTable::build(
        &[
            UpstreamNames {
                namer: &x,
                names: &["a__b"],
            },
            UpstreamNames {
                namer: &bad,
                names: &["b"],
            },
        ],
        &Filter::default(),
    );
    assert_eq!(t.resolve("x__a__b"), Some((0, "a__b")));
    assert!(matches!(&problems[..], [NameProblem::Collision { dropped: (1, d), .. }] if d == "b"));
}

#[test]
fn duplicates_within_an_upstream_are_reported() {
    let n = namer("u");
    let (t, problems) = NameTable::build(
        &[UpstreamNames {
            namer: &n,
            names: &["a", "a"],
        }],
        &Filter::default(),
    );
    assert_eq!(t.len(), 1);
    assert_eq!(
        problems,
        [NameProblem::Duplicate {
            upstream: 0,
            original: "a".into()
        }]
    );
}

#[test]
fn filters_decide_on_exposed_names() {
    let (gh, fs) = (namer("gh"), namer("fs"));
    let filter = Filter::new(&["gh__*", "fs__read"], &["*delete*"]).expect("valid");
    let (t, problems) = NameTable::build(
        &[
            UpstreamNames {
                namer: &gh,
                names: &["search", "delete_repo"],
            },
            UpstreamNames {
                namer: &fs,
                names: &["read", "write"],
            },
        ],
        &filter,
    );
    assert!(problems.is_empty());
    let listed: Vec<&str> = t.entries().iter().map(|e| &*e.exposed).collect();
    assert_eq!(listed, ["gh__search", "fs__read"]);
    assert_eq!(t.resolve("gh__delete_repo"), None);
    assert_eq!(t.resolve("fs__write"), None);
}

#[test]
fn filter_rules() {
    let f = Filter::new(&[] as &[&str], &["secret_*"]).expect("valid");
    assert!(f.allows("anything"));
    assert!(!f.allows("secret_x"));
    let f = Filter::new(&["a*", "b?c"], &["ab*"]).expect("valid");
    assert!(f.allows("a") && f.allows("axx") && f.allows("bxc") && f.allows("béc"));
    assert!(!f.allows("ab") && !f.allows("abc") && !f.allows("bc") && !f.allows("bxxc"));
    assert!(Filter::default().allows("") && Filter::default().is_all());
    let f = Filter::new(&["ui://*"], &[] as &[&str]).expect("valid");
    assert!(f.allows("ui://widgets/chart.html") && !f.allows("file:///ui://"));
    assert_eq!(
        Filter::new(&["ok", ""], &[] as &[&str]),
        Err(GlobError {
            list: FilterList::Allow,
            index: 1,
            reason: "empty glob (matches nothing; `*` matches everything)"
        })
    );
    assert!(Filter::new(&[] as &[&str], &["x".repeat(2000)]).is_err());
    // Literal brackets and braces (URI templates).
    let f = Filter::new(&["file:///{path}"], &[] as &[&str]).expect("valid");
    assert!(f.allows("file:///{path}") && !f.allows("file:///etc"));
}

#[test]
fn filters_that_match_nothing_are_named() {
    let f = Filter::new(&["gh__*", "gh__serch"], &["*delete*", "fs__*"]).expect("valid");
    let names = ["gh__search", "gh__delete_repo"];
    assert_eq!(
        f.matches_nothing(&names),
        [
            Unmatched {
                list: FilterList::Allow,
                index: 1,
                pattern: "gh__serch".into()
            },
            Unmatched {
                list: FilterList::Deny,
                index: 1,
                pattern: "fs__*".into()
            },
        ]
    );
    assert_eq!(f.matches_nothing::<&str>(&[]).len(), 4);
}

#[test]
fn glob_matching_edge_cases() {
    for (g, t, m) in [
        ("*", "", true),
        ("**", "abc", true),
        ("?", "", false),
        ("?", "é", true),
        ("??", "é", false),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "aXbY", false),
        ("*a", "bbba", true),
        ("*a", "bbbab", false),
        ("a*a*a*a*b", &"a".repeat(200), false),
        ("é*", "éa", true),
        ("*é", "aé", true),
        ("x", "é", false),
    ] {
        assert_eq!(glob_match(g, t), m, "{g:?} ~ {t:?}");
    }
}

#[test]
fn uri_table_routes_exact_uris_then_templates() {
    let resources: [&[&str]; 2] = [
        &["ui://chart/main.html", "file:///etc/motd"],
        &["file:///etc/motd", "mem://notes/1"],
    ];
    let templates: [&[&str]; 2] = [&["file:///home/{user}/{+path}"], &["mem://notes/{id}"]];
    let (t, problems) = UriTable::build(&resources, &templates, &Filter::default());
    assert_eq!(
        problems,
        [NameProblem::Collision {
            exposed: "file:///etc/motd".into(),
            kept: (0, "file:///etc/motd".into()),
            dropped: (1, "file:///etc/motd".into()),
        }]
    );
    assert_eq!(t.route("ui://chart/main.html"), Some(0));
    assert_eq!(t.route("file:///etc/motd"), Some(0));
    assert_eq!(t.route("mem://notes/1"), Some(1));
    assert_eq!(t.route("mem://notes/99"), Some(1));
    assert_eq!(t.route("file:///home/ann/x.txt"), Some(0));
    assert_eq!(t.route("file:///root/x"), None);
    assert_eq!(t.route(""), None);
    assert!(t.exposes(0, "file:///etc/motd") && !t.exposes(1, "file:///etc/motd"));
    assert!(t.exposes_template(1, "mem://notes/{id}"));
    assert_eq!(t.resources().count(), 3);
    assert_eq!(t.templates().count(), 2);
}

#[test]
fn overlapping_templates_of_two_upstreams_are_refused() {
    let templates: [&[&str]; 3] = [
        &["db://{table}", "db://{table}/{id}"],
        &["db://users/{id}", "s3://{bucket}"],
        &["{+anything}"],
    ];
    let (t, problems) = UriTable::build::<&str, &str>(&[], &templates, &Filter::default());
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        matches!(&problems[0], NameProblem::TemplateOverlap { dropped: (1, d), .. } if d == "db://users/{id}")
    );
    assert!(matches!(
        &problems[1],
        NameProblem::TemplateOverlap {
            dropped: (2, _),
            ..
        }
    ));
    assert_eq!(t.route("db://users/1"), Some(0));
    assert_eq!(t.route("s3://b/k"), Some(1));
}

#[test]
fn uri_filters_apply_to_resources_and_templates() {
    let f = Filter::new(&["ui://*", "mem://*"], &["mem://secret*"]).expect("valid");
    let resources: [&[&str]; 1] = [&["ui://a", "file:///x", "mem://secret/1"]];
    let templates: [&[&str]; 1] = [&["mem://notes/{id}", "file:///{p}"]];
    let (t, _) = UriTable::build(&resources, &templates, &f);
    assert_eq!(t.route("ui://a"), Some(0));
    assert_eq!(t.route("file:///x"), None);
    assert_eq!(t.route("mem://secret/1"), None);
    assert_eq!(t.route("mem://notes/2"), Some(0));
}

/// A reference glob matcher (dynamic programming over characters) to hold `glob_match` to.
fn reference_match(g: &str, t: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (g.chars().collect(), t.chars().collect());
    let mut dp = vec![vec![false; t.len() + 1]; g.len() + 1];
    dp[0][0] = true;
    for i in 1..=g.len() {
        for j in 0..=t.len() {
            dp[i][j] = match g[i - 1] {
                '*' => dp[i - 1][j] || (j > 0 && dp[i][j - 1]),
                '?' => j > 0 && dp[i - 1][j - 1],
                c => j > 0 && t[j - 1] == c && dp[i - 1][j - 1],
            };
        }
    }
    dp[g.len()][t.len()]
}

fn arb_prefix() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,20}".prop_filter("valid prefix", |p| {
        Namer::new(Some(p), SEPARATOR, DEFAULT_MAX_LEN).is_ok()
    })
}

/// Names that hit every branch: plain, separators inside, unicode, long, empty.
fn arb_original() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{0,12}",
        "[A-Za-z0-9_.-]{0,80}",
        "[a_-]{0,70}",
        "(x|__|-|--|é| |a){0,40}",
        ".{0,100}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn exposed_names_are_valid_deterministic_and_bounded(
        prefix in proptest::option::of(arb_prefix()),
        original in arb_original(),
        max in MIN_MAX_LEN..=MAX_MAX_LEN,
    ) {
        let Ok(n) = Namer::new(prefix.as_deref(), SEPARATOR, max) else {
            return Ok(()); // a prefix too long for this maximum
        };
        let (e, why) = n.expose(&original);
        prop_assert!(valid(&e, max), "{e:?}");
        prop_assert_eq!(&n.expose(&original), &(e.clone(), why));
        if let Some(p) = &prefix {
            prop_assert!(e.starts_with(&format!("{p}{SEPARATOR}")), "{e:?}");
        }
        if why == Rewrite::None {
            prop_assert_eq!(e, format!("{}{}", prefix.map(|p| p + SEPARATOR).unwrap_or_default(), original));
        } else {
            prop_assert!(looks_hashed(&e));
        }
    }

    #[test]
    fn different_originals_never_meet(
        prefix in proptest::option::of(arb_prefix()),
        a in arb_original(),
        b in arb_original(),
        max in MIN_MAX_LEN..=MAX_MAX_LEN,
    ) {
        prop_assume!(a != b);
        if let Ok(n) = Namer::new(prefix.as_deref(), SEPARATOR, max) {
            prop_assert_ne!(n.expose(&a).0, n.expose(&b).0);
        }
    }

    #[test]
    fn different_prefixes_never_meet(
        p in arb_prefix(), q in arb_prefix(), a in arb_original(), b in arb_original(),
    ) {
        prop_assume!(p != q);
        prop_assert!(prefix_overlaps(&[namer(&p), namer(&q)]).is_empty());
        prop_assert_ne!(namer(&p).expose(&a).0, namer(&q).expose(&b).0);
    }

    #[test]
    fn tables_round_trip_every_name(
        lists in proptest::collection::vec(
            (arb_prefix(), proptest::collection::vec(arb_original(), 0..12)), 1..5),
    ) {
        let namers: Vec<Namer> = lists.iter().map(|(p, _)| namer(p)).collect();
        let ups: Vec<UpstreamNames<'_, String>> = lists.iter().zip(&namers)
            .map(|((_, names), namer)| UpstreamNames { namer, names }).collect();
        let (t, problems) = NameTable::build(&ups, &Filter::default());
        let prefixes: std::collections::HashSet<&str> = lists.iter().map(|(p, _)| p.as_str()).collect();
        for p in &problems {
            // Only an upstream listing a name twice, or two upstreams sharing a prefix (the
            // config refuses that), can be a problem.
            match p {
                NameProblem::Duplicate { .. } => {}
                NameProblem::Collision { kept, dropped, .. } => {
                    prop_assert!(prefixes.len() < lists.len());
                    prop_assert_eq!(lists[kept.0].0.as_str(), lists[dropped.0].0.as_str());
                    prop_assert_eq!(&kept.1, &dropped.1);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
        for e in t.entries() {
            prop_assert_eq!(t.resolve(&e.exposed), Some((e.upstream, &*e.original)));
            prop_assert_eq!(t.exposed(e.upstream, &e.original), Some(&*e.exposed));
        }
    }

    #[test]
    fn glob_agrees_with_the_reference(g in "[ab*?é]{0,8}", t in "[abé]{0,12}") {
        prop_assert_eq!(glob_match(&g, &t), reference_match(&g, &t));
    }

    #[test]
    fn hostile_strings_never_panic(s in ".{0,300}", g in ".{0,40}", max in 0usize..300) {
        let _ = exposed_with_reason(&s, &s, &s, max);
        let _ = Namer::new(Some(&s), &g, max);
        let _ = glob_match(&g, &s);
        if let Ok(f) = Filter::new(&[g.as_str()], &[s.as_str()]) {
            let _ = f.allows(&s);
            let _ = f.matches_nothing(&[&s]);
        }
    }
}
