use serde_json::json;

use super::*;

fn source(name: &str, subject: &str, text: Option<&str>, html: Option<&str>) -> TemplateSource {
    TemplateSource {
        name: name.into(),
        subject: subject.into(),
        text: text.map(str::to_owned),
        html: html.map(str::to_owned),
    }
}

fn render(sources: Vec<TemplateSource>, data: Json) -> Result<Rendered, TemplateError> {
    let root = sources[0].name.clone();
    let set = TemplateSet::from_sources(&root, sources, Limits::default()).unwrap();
    match set.render(&data) {
        Ok(r) => Ok(r),
        Err(RenderError::Template(e)) => Err(e),
        Err(RenderError::Missing(names)) => panic!("a closed set never misses: {names:?}"),
    }
}

#[test]
fn html_is_escaped_while_subject_and_text_are_not() {
    let r = render(
        vec![source(
            "t",
            "Order for {{ name }}",
            Some("Hi {{ name }}\n"),
            Some("<p>Hi {{ name }}</p>"),
        )],
        json!({"name": "Tom & <Jerry>"}),
    )
    .unwrap();
    assert_eq!(r.subject, "Order for Tom & <Jerry>");
    assert_eq!(r.text, "Hi Tom & <Jerry>\n", "the trailing newline is kept");
    assert_eq!(r.html.unwrap(), "<p>Hi Tom &amp; &lt;Jerry&gt;</p>");
}

#[test]
fn an_undefined_variable_is_an_error_naming_it() {
    let e = render(
        vec![source("t", "x", Some("Hello\n  {{ user.name }}!"), None)],
        json!({"user": {}}),
    )
    .unwrap_err();
    let location = e.location().unwrap();
    assert_eq!(
        (location.template.as_str(), location.part, location.line),
        ("t", PartKind::Text, 2)
    );
    assert!(e.to_string().contains("`user.name` is undefined"), "{e}");
    assert!(
        e.to_string().starts_with("template \"t\" (text), line 2"),
        "{e}"
    );
    let e = render(
        vec![source("t", "{{ missing }}", Some("x"), None)],
        json!({}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("`missing` is undefined"), "{e}");
    assert_eq!(e.part(), Some(PartKind::Subject));
}

#[test]
fn syntax_errors_name_part_line_and_column() {
    let e = validate(
        &source("t", "ok", None, Some("<p>\n  {{ a b }}</p>")),
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "template_syntax");
    let location = e.location().unwrap();
    assert_eq!(
        (location.part, location.line, location.column),
        (PartKind::Html, 2, Some(8))
    );
    assert!(e.to_string().contains("syntax error"), "{e}");
    let e = validate(&source("t", "x", None, None), &Limits::default()).unwrap_err();
    assert_eq!(e.code(), "template_empty");
}

#[test]
fn extends_and_include_take_the_same_part_of_other_templates() {
    let layout = source(
        "layout",
        "unused",
        Some("== {% block body %}{% endblock %} ==\n{% include \"footer\" %}"),
        Some(
            "<html><head><style>p { color: #333 }</style></head><body>{% block body %}{% endblock %}\
             {% include \"footer\" %}</body></html>",
        ),
    );
    let footer = source(
        "footer",
        "unused",
        Some("-- {{ company }}"),
        Some("<p class=f>{{ company }}</p>"),
    );
    let welcome = source(
        "welcome",
        "Welcome, {{ name }}",
        Some("{% extends \"layout\" %}{% block body %}Hi {{ name }}{% endblock %}"),
        Some("{% extends \"layout\" %}{% block body %}<p>Hi {{ name }}</p>{% endblock %}"),
    );
    let r = render(
        vec![welcome, layout, footer],
        json!({"name": "Ana", "company": "A&B"}),
    )
    .unwrap();
    assert_eq!(r.text, "== Hi Ana ==\n-- A&B");
    let html = r.html.unwrap();
    assert!(
        html.contains("<p style=\"color: #333;\">Hi Ana</p>"),
        "{html}"
    );
    assert!(html.contains("A&amp;B</p>"), "{html}");
    assert!(!html.contains("<style"), "{html}");
}

#[test]
fn errors_inside_an_include_point_into_the_include() {
    let e = render(
        vec![
            source("main", "s", Some("line one\n{% include \"part\" %}"), None),
            source("part", "s", Some("\n\n   {{ nope }}"), None),
        ],
        json!({}),
    )
    .unwrap_err();
    let location = e.location().unwrap();
    assert_eq!(
        (location.template.as_str(), location.line, location.column),
        ("part", 3, Some(7))
    );
    let e = render(
        vec![source("main", "s", Some("{% include \"gone\" %}"), None)],
        json!({}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no template named \"gone\""), "{e}");
    let e = render(
        vec![
            source("main", "s", None, Some("{% extends \"plain\" %}")),
            source("plain", "s", Some("text only"), None),
        ],
        json!({}),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("template \"plain\" has no html part"),
        "{e}"
    );
}

#[test]
fn a_text_part_is_made_from_the_html_when_there_is_none() {
    let r = render(
        vec![source(
            "t",
            "s",
            None,
            Some("<h1>Hello {{ name }}</h1><p>See <a href=\"https://x.example/o\">your order</a>.</p>"),
        )],
        json!({"name": "Ana"}),
    )
    .unwrap();
    assert!(r.text.contains("Hello Ana"), "{}", r.text);
    assert!(r.text.contains("https://x.example/o"), "{}", r.text);
}

#[test]
fn renders_are_bounded_in_work_and_size() {
    let start = std::time::Instant::now();
    let e = render(
        vec![source(
            "t",
            "s",
            Some("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}"),
            None,
        )],
        json!({}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("budget"), "{e}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "a runaway loop stops at its budget, quickly: {:?}",
        start.elapsed()
    );
    let limits = Limits {
        output_bytes: 1_000,
        ..Limits::default()
    };
    let set = TemplateSet::from_sources(
        "t",
        [source("t", "s", Some("{{ 'x' * 5000 }}"), None)],
        limits,
    )
    .unwrap();
    match set.render(&json!({})) {
        Err(RenderError::Template(TemplateError::OutputTooLarge { limit: 1_000, .. })) => {}
        other => panic!("{other:?}"),
    }
    let big = "x".repeat(Limits::default().source_bytes + 1);
    let e = validate(&source("t", "s", Some(&big), None), &Limits::default()).unwrap_err();
    assert_eq!(e.code(), "template_too_large");
}

#[test]
fn names_are_plain() {
    for ok in ["welcome", "order.shipped", "a-b_c", "9lives"] {
        check_name(ok).unwrap();
    }
    for bad in ["", "-x", "a/b", "a#html", "sp ace", "é", &"x".repeat(129)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_set_renders_on_many_threads() {
    let set = TemplateSet::from_sources(
        "t",
        [source("t", "Hi {{ n }}", Some("n={{ n }}"), None)],
        Limits::default(),
    )
    .unwrap();
    std::thread::scope(|s| {
        for n in 0..4 {
            let set = &set;
            s.spawn(move || {
                for _ in 0..100 {
                    let r = set.render(&json!({"n": n})).unwrap();
                    assert_eq!(r.text, format!("n={n}"));
                }
            });
        }
    });
}

#[test]
fn optional_values_use_default_or_is_defined() {
    let r = render(
        vec![source(
            "t",
            "{{ nick | default(name) }}",
            Some("{% if coupon is defined %}Code: {{ coupon }}{% else %}no code{% endif %}"),
            None,
        )],
        json!({"name": "Ana"}),
    )
    .unwrap();
    assert_eq!((r.subject.as_str(), r.text.as_str()), ("Ana", "no code"));
}
