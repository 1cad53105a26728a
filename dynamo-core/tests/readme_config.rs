//! The README's configuration reference lists every field of `Config`
//! with its default, so the two cannot drift apart.

use dynamo_core::config::Config;

#[test]
fn readme_documents_every_config_field_with_its_default() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let fields = defaults.as_object().unwrap();
    assert!(fields.len() > 10);
    for (name, default) in fields {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("README's configuration table has no row for `{name}`"));
        assert!(
            row.contains(&format!("| `{default}` |")),
            "README row for `{name}` must show its default `{default}`: {row}"
        );
    }
}
