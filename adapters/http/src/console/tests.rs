use super::*;

#[test]
fn form_fields_are_percent_decoded() {
    let f = form_fields(b"token=a%2Bb+c%3D&csrf=00ff&bad=%zz%4");
    assert_eq!(f[0], ("token".to_owned(), "a+b c=".to_owned()));
    assert_eq!(f[1], ("csrf".to_owned(), "00ff".to_owned()));
    assert_eq!(f[2], ("bad".to_owned(), "%zz%4".to_owned()));
}

#[test]
fn pages_link_versioned_assets_and_escape_errors() {
    assert!(INDEX.contains("/ui/assets/app.js?v="));
    assert!(!INDEX.contains("{{asset:"));
    assert!(!LOGIN.contains("{{asset:"));
    assert!(!SIGNED_IN.contains("{{asset:"));
    assert_eq!(percent_encode("a b&c=é~"), "a%20b%26c%3D%C3%A9~");
    assert!(plausible_host("metis.example.com:8443") && plausible_host("[::1]:80"));
    assert!(!plausible_host("evil.com/x") && !plausible_host(""));
    assert_eq!(
        escape_html("<b a=\"x\">&'"),
        "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
    );
}

#[test]
fn no_page_has_inline_script_or_style() {
    for page in [INDEX.as_str(), LOGIN.as_str(), SIGNED_IN.as_str()] {
        assert!(!page.contains("<style"), "inline <style> in a console page");
        assert!(
            !page.contains(" style="),
            "inline style attribute in a console page"
        );
        // No inline event handler (` onclick=` and the like).
        for (i, _) in page.match_indices(" on") {
            let rest = &page[i + 3..];
            let name_len = rest.chars().take_while(char::is_ascii_lowercase).count();
            assert!(
                name_len == 0 || !rest[name_len..].starts_with('='),
                "inline event handler in a console page: {}",
                &page[i..(i + 20).min(page.len())]
            );
        }
        for script in page.split("<script").skip(1) {
            assert!(
                script.trim_start().starts_with("src=") || script.contains(" src="),
                "inline <script> in a console page"
            );
        }
    }
}

/// The audit page's type filter offers every audit type the gateway writes: a type added to
/// the domain without the filter would be unreachable from the console.
#[test]
fn the_audit_filter_lists_every_audit_type() {
    let js = include_str!("../../console/app.js");
    for t in metis_domain::audit::AUDIT_TYPES {
        assert!(
            js.contains(&format!("'{t}'")),
            "app.js AUDIT_TYPES lacks {t}"
        );
    }
}
