//! What the chart tests share (`tests/deploy.rs`, `tests/chart_upgrade.rs`): the repository's
//! files and the Go-built tools in `bin/`, `helm` above all.

use std::path::{Path, PathBuf};
use std::process::Command;

use cyclr_testenv::TestEnv;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/cyclr-operator");

pub fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

/// A tool built into `bin/` by `make testbin`.
pub fn testbin(name: &str) -> Command {
    let path = repo("bin").join(name);
    assert!(path.exists(), "{} is missing: run `make testbin`", path.display());
    Command::new(path)
}

/// Runs `cmd`, panicking with its stderr unless it succeeds; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `bin/helm` talking to the test control plane, with its own cache and config directories.
pub fn helm(env: &TestEnv, home: &Path) -> Command {
    let mut cmd = testbin("helm");
    cmd.env("KUBECONFIG", env.kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}
