//! `dynamo-server serve` as a newcomer first runs it: with no
//! configuration, with a mistake in it, and scraped by Prometheus.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{free_ports, private_loopback};

mod support;

const EXE: &str = env!("CARGO_BIN_EXE_dynamo-server");

/// `serve` in `dir`, with the environment cleared of `DYNAMO_*` but `env`.
fn serve(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = Command::new(EXE);
    command.current_dir(dir).arg("serve").args(args);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("DYNAMO_")) {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// No configuration at all: a usable single node (N, R, W fitted to it,
/// said in the log), whatever non-config `DYNAMO_*` variables are set;
/// its metrics are Prometheus 0.0.4 text unless OpenMetrics is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_config_is_a_usable_single_node() {
    let dir = tempfile::tempdir().unwrap();
    let host = private_loopback();
    let [http, peer] = free_ports(&host, 2)[..] else { unreachable!("two ports asked for") };
    let env = [
        ("DYNAMO_PEER__LISTEN", format!("{host}:{peer}")),
        ("DYNAMO_URL", format!("http://{host}:{http}")),
        ("DYNAMO_TEST_SEED", "7".into()),
        ("DYNAMO_SIM_FROM", "0".into()),
        ("DYNAMO_SIM_LOG", "debug".into()),
    ];
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = serve(dir.path(), &["--http-listen", &format!("{host}:{http}")], &env)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let running = Running(child);
    let url = format!("http://{host}:{http}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(format!("{url}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "serve did not answer; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let put = client.put(format!("{url}/kv/greeting")).body("hello").send().await.unwrap();
    assert_eq!(put.status(), 204);
    let got = client.get(format!("{url}/kv/greeting")).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "hello");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("fitted to one member, N=1 R=1 W=1"), "{log}");
    assert!(
        dir.path().join("dynamo-data").is_dir(),
        "the default data directory, relative to the working one"
    );

    let metrics = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(metrics.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = metrics.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let repairs = scrape.samples.iter().find(|s| s.metric == "dynamo_read_repairs_total").unwrap();
    assert!(matches!(repairs.value, prometheus_parse::Value::Counter(_)), "{text}");
    let open = client
        .get(format!("{url}/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(open.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(open.text().await.unwrap().ends_with("# EOF\n"));

    kill(Pid::from_raw(running.0.id() as i32), Signal::SIGTERM).unwrap();
}

/// Mistakes are refused with one message naming the key as written, and
/// nothing is written to disk.
#[test]
fn mistakes_are_named_before_the_disk_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, String)], &'a str);
    let cases: [Case; 3] = [
        (
            &["--reconciler", "cart-union", "--data-dir", data],
            &[],
            "reconciler = \"cart-union\" is not known",
        ),
        (
            &["--data-dir", data],
            &[("DYNAMO_CLUSTR__W", "1".into())],
            "environment variable DYNAMO_CLUSTR__W: unknown key",
        ),
        (&["--data-dir", data, "--config", "bad.toml"], &[], "bad.toml: cluster.w: invalid type"),
    ];
    std::fs::write(dir.path().join("bad.toml"), "[cluster]\nw = \"two\"\n").unwrap();
    for (args, env, expected) in cases {
        let out = serve(dir.path(), args, env).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.matches("invalid configuration").count(), 1, "{err}");
        assert!(!data_dir.exists(), "{args:?} created the data directory");
    }
}
