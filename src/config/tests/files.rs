//! Loading config files, and the example configs shipped with chacha.

use super::*;

#[test]
fn load_reads_files_and_names_them() {
    let dir = std::env::temp_dir().join(format!("chacha-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, "addr: 127.0.0.1:8080\n").unwrap();
    assert_eq!(load(&good).unwrap().addr.port(), 8080);

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "addr: 127.0.0.1:8080\nworkers: x\n").unwrap();
    let message = load(&bad).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "{}:2: workers: expected a positive integer up to {MAX_WORKERS}, found string \"x\"",
            bad.display()
        )
    );

    let missing = dir.join("missing.yaml");
    let message = load(&missing).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: cannot read config file", missing.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_config_parses_and_runs_without_root() {
    let config = parse(EXAMPLE_CONFIG).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(
        config.disk,
        Some(DiskConfig {
            dir: PathBuf::from("./chacha-cache"),
            limit: 1_000_000_000
        })
    );
    assert!(config.cluster.is_none() && config.tls_interceptor.is_none());
}

#[test]
fn example_config_commented_settings_parse_when_enabled() {
    // Lines starting with "# " are optional settings; "##" lines are prose.
    let enabled: String = EXAMPLE_CONFIG
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    let config = parse(&enabled).unwrap_or_else(|err| panic!("{err}\n{enabled}"));
    assert_eq!(config.workers, 2);
    assert_eq!(config.rules.len(), 3);
    assert!(config.rules[0]
        .pattern
        .is_match("https://ghcr.io/v2/a/b/blobs/sha256:0"));
    assert!(config.rules[2].direct_connect && config.rules[2].direct_connect_header);
    assert_eq!(config.tls_interceptor.unwrap().ports, [443]);
    assert_eq!(config.cluster.unwrap().nodes.len(), 2);
}

#[test]
fn ghcr_example_parses() {
    let config =
        parse(include_str!("../../../examples/ghcr.yaml")).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.rules.len(), 2);
    assert!(config.rules[0].ignore_authorization_header);
    assert!(config.rules[0]
        .pattern
        .is_match("https://ghcr.io/v2/homebrew/core/sccache/blobs/sha256:4a1c"));
    let storage = &config.rules[1];
    assert!(storage.pattern.is_match(
        "https://pkg-containers.githubusercontent.com/ghcr1/blobs/sha256:4a1c?se=1&sig=2"
    ));
    for param in ["X-Amz-Signature", "X-Amz-Date", "sig", "se"] {
        assert!(
            storage.ignore_parameters.iter().any(|p| p == param),
            "{param}"
        );
    }
    assert!(config.tls_interceptor.is_some());
}
