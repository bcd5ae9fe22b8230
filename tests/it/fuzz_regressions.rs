//! The fuzz corpus as a stable test: every file under `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/` goes through the same entry point the
//! cargo-fuzz target calls (fuzz/src/lib.rs, included below), so CI exercises
//! them without nightly or libFuzzer. A crash found by `scripts/fuzz.sh` is
//! kept as `fuzz/regressions/<target>/<name>` and replayed here for good.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_entry;

use std::path::{Path, PathBuf};

/// Keeps the committed corpus small (it is replayed by every `cargo test`).
const MAX_FILES: usize = 250;
const MAX_BYTES: u64 = 4 << 20;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md" && n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

/// Runs `run` on every input of `target` under `root`; returns the failures.
fn replay(root: &str, target: &str, run: fn(&[u8])) -> (usize, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(root).join(target);
    let files = inputs(&dir);
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("read fuzz input");
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {what}", file.display()));
        }
    }
    (files.len(), failures)
}

#[test]
fn corpus_replays_without_a_crash() {
    let mut failures = Vec::new();
    for (target, run) in fuzz_entry::TARGETS {
        let (count, failed) = replay("fuzz/corpus", target, *run);
        assert!(count > 0, "fuzz/corpus/{target} is empty: the seed corpus went missing");
        eprintln!("fuzz/corpus/{target}: {count} inputs replayed");
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} corpus input(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn regressions_replay_without_a_crash() {
    let mut failures = Vec::new();
    for (target, run) in fuzz_entry::TARGETS {
        let (count, failed) = replay("fuzz/regressions", target, *run);
        if count > 0 {
            eprintln!("fuzz/regressions/{target}: {count} inputs replayed");
        }
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} regression input(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn committed_corpus_stays_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let (mut files, mut bytes) = (0, 0);
    for (target, _) in fuzz_entry::TARGETS {
        for file in inputs(&root.join(target)) {
            files += 1;
            bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        }
    }
    assert!(
        files <= MAX_FILES && bytes <= MAX_BYTES,
        "fuzz/corpus holds {files} files, {bytes} bytes (cap {MAX_FILES} files, {MAX_BYTES} bytes): run `scripts/fuzz.sh --minimize`"
    );
}

#[test]
fn the_expansion_models_agree_on_the_documented_cases() {
    // The two models the expansion target compares, on Kubernetes' documented examples.
    let env = |name: &str| match name {
        "VAR_NAME" => Some("value"),
        "EMPTY" => Some(""),
        _ => None,
    };
    for (input, want) in [
        ("$(VAR_NAME)", "value"),
        ("$$(VAR_NAME)", "$(VAR_NAME)"),
        ("$$$(VAR_NAME)", "$value"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(VAR_NAME", "$(VAR_NAME"),
        ("a$", "a$"),
        ("$(EMPTY)x", "x"),
        ("$(a$(VAR_NAME))", "$(a$(VAR_NAME))"),
    ] {
        let (model, _) = fuzz_entry::kubelet_expand(input, env, true);
        assert_eq!(String::from_utf8_lossy(&model), want, "{input}");
        assert_eq!(tailguard::expansion::expand(input, env), want, "{input}");
    }
    // Go's quirk: the byte after a lone `$` becomes a code point of its own.
    let (go, _) = fuzz_entry::kubelet_expand("$é", env, true);
    assert_eq!(go, b"$\xc3\x83\xa9");
    let (intended, _) = fuzz_entry::kubelet_expand("$é", env, false);
    assert_eq!(intended, "$é".as_bytes());
}
