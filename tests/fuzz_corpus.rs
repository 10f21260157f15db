//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/*`) through the same
//! property checks the fuzz targets run (`chacha::fuzzing`), on the stable toolchain, so
//! `cargo test` (and `.ci/run`) catches a regression on any input the fuzzer ever kept.
//! A missing or empty corpus directory fails: it would otherwise pass silently.

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chacha::fuzzing::{Check, TARGETS};
use common::with_deadline;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The corpus files of `target`, sorted; panics when there are none.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Runs `check` on every file of the target's corpus; fails listing each file that
/// breaks a property, with the property's message.
fn replay(target: &'static str) {
    let check: Check = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check named {target}"))
        .1;
    with_deadline(Duration::from_secs(60), move || {
        let files = corpus(target);
        let mut failures = Vec::new();
        for file in &files {
            let data = fs::read(file).expect("read corpus file");
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {message}", file.display()));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} {target} inputs break a property:\n{}",
            failures.len(),
            files.len(),
            failures.join("\n")
        );
        eprintln!("{target}: {} inputs replayed", files.len());
    });
}

#[test]
fn request_head_corpus() {
    replay("request_head");
}

#[test]
fn response_head_corpus() {
    replay("response_head");
}

#[test]
fn chunked_corpus() {
    replay("chunked");
}

#[test]
fn range_corpus() {
    replay("range");
}

#[test]
fn kv_metadata_corpus() {
    replay("kv_metadata");
}

#[test]
fn config_corpus() {
    replay("config");
}

/// Every check has a fuzz target and a corpus, and every corpus directory a check (so a
/// target added to one side only is noticed).
#[test]
fn every_target_has_a_fuzz_target_and_a_corpus() {
    with_deadline(Duration::from_secs(10), || {
        for (name, _) in TARGETS {
            let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
            let source =
                fs::read_to_string(&target).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
            assert!(
                source.contains(&format!("chacha::fuzzing::{name}(")),
                "{} does not call chacha::fuzzing::{name}",
                target.display()
            );
            corpus(name);
        }
        for dir in fs::read_dir(fuzz_dir().join("corpus")).expect("fuzz/corpus") {
            let name = dir.expect("corpus entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "fuzz/corpus/{name} has no check in chacha::fuzzing::TARGETS"
            );
        }
    });
}

/// Found by the config property (seeds `merge-key-bad`, `not-a-mapping`,
/// `quoted-key-newline`): every problem names its key or its line, and each is one line
/// of `chacha check`'s output.
#[test]
fn config_problems_name_a_key_or_line_on_one_line_each() {
    with_deadline(Duration::from_secs(10), || {
        let problem = |text: &str| {
            let err = chacha::config::parse(text).expect_err(text);
            assert_eq!(err.problems.len(), 1, "{err}");
            let shown = err.to_string();
            assert_eq!(shown.lines().count(), 1, "{shown:?}");
            (err.problems[0].clone(), shown)
        };
        // A `<<` whose value is not a mapping: the merge key and its line.
        let (p, shown) = problem("addr: 127.0.0.1:8080\ndisk:\n  <<: 5\n");
        assert_eq!((p.key.as_str(), p.line), ("disk.<<", Some(3)), "{shown}");
        assert!(p.message.starts_with("invalid YAML merge key"), "{shown}");
        // A document that is not a mapping: the line where it starts.
        let (p, shown) = problem("# chacha\n\n- addr: :1\n");
        assert_eq!((p.key.as_str(), p.line), ("", Some(3)), "{shown}");
        assert_eq!(
            shown,
            "line 3: expected a mapping of settings, found a list"
        );
        // A YAML error at the end of the input: on its last line, not the one after
        // (libyaml's position), whatever the line ends (crash-eb062b7d in the corpus).
        for text in ["addr: 1\nworke", "addr: 1\r\nworke", "addr: 1\rworke"] {
            let (p, shown) = problem(text);
            assert_eq!((p.key.as_str(), p.line), ("", Some(2)), "{text:?}: {shown}");
            assert!(p.message.starts_with("invalid YAML"), "{shown}");
        }
        // `...x` and `---x` are plain scalars, not document markers (YAML 1.2 §9.2):
        // the document starts on their line (crash-e06bd66a in the corpus); after a
        // marker, on the marker's line.
        for (text, line) in [("...add]:8080'\n", 1), ("# c\n---x\n", 2), ("--- [1]\n", 1)] {
            let (p, shown) = problem(text);
            assert_eq!(
                (p.key.as_str(), p.line),
                ("", Some(line)),
                "{text:?}: {shown}"
            );
            assert!(
                p.message.starts_with("expected a mapping of settings"),
                "{shown}"
            );
        }
        // YAML errors without a position: a second document (crash-a5cd0ce6 in the
        // corpus) names where it starts; too many alias repetitions the first line.
        for (text, line) in [
            ("addr: :1\n---\naddr: :2\n", 2),
            ("# c\naddr: :1\n...\n# c\naddr: :2\n", 5),
            ("--- 1\n--- 2\n", 2),
        ] {
            let (p, shown) = problem(text);
            assert_eq!(
                (p.key.as_str(), p.line),
                ("", Some(line)),
                "{text:?}: {shown}"
            );
            assert!(p.message.contains("more than one document"), "{shown}");
        }
        let mut bomb = String::from("# c\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let (p, shown) = problem(&bomb);
        assert_eq!((p.key.as_str(), p.line), ("", Some(2)), "{shown}");
        assert!(p.message.contains("repetition limit"), "{shown}");
        // Lines end at CR alone too, as in YAML (crash-a2668d18 in the corpus).
        let (p, shown) = problem("# c\r- a\r");
        assert_eq!((p.key.as_str(), p.line), ("", Some(2)), "{shown}");
        let (p, shown) = problem("addr: :1\r# c\u{2028}bogus: 1\r\n");
        assert_eq!((p.key.as_str(), p.line), ("bogus", Some(3)), "{shown}");
        // A quoted key holding a line break is shown escaped (the key-line scanner does
        // not follow quoted keys, so no line here).
        let (p, shown) = problem("addr: 127.0.0.1:8080\n\"a\\nb\": 1\n");
        assert_eq!(p.key, "a\nb", "{shown}");
        assert!(shown.starts_with("a\\nb: unknown key"), "{shown}");
    });
}
