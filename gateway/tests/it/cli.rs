//! The `herald` command line as an operator meets it: error output, exit
//! codes, and the start-up lines scripts and people read.

use crate::common::*;

#[test]
fn an_operator_error_is_one_line_without_a_backtrace() {
    let out = herald()
        .command()
        .args(["serve", "--ping-interval", "0s"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run herald");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "Error: invalid configuration: [session] session.ping_interval must be greater than zero"
    );
}

#[test]
fn config_check_exits_non_zero_on_any_problem() {
    let run = |args: &[&str]| {
        herald()
            .command()
            .arg("config")
            .arg("check")
            .args(args)
            .output()
            .expect("run herald")
            .status
    };
    assert!(run(&[]).success());
    assert!(!run(&["--outbound-queue", "1"]).success());
    assert!(!run(&["--config", "/nonexistent/herald.toml"]).success());
}

#[tokio::test]
async fn the_start_up_line_and_the_log_name_the_same_admin_address() {
    for args in [&["--admin-listen", "127.0.0.1:0"][..], &[][..]] {
        let gw = herald().start(args);
        let want = format!("admin={}", gw.admin);
        assert!(gw.log_contains("herald listening").await);
        let logs = gw.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("herald listening"))
            .expect("start-up log line");
        assert!(line.contains(&want), "{line:?} lacks {want}");
        assert!(!line.contains("Some(") && !line.contains("None"), "{line}");
    }
}
