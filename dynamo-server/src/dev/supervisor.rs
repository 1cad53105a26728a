//! The supervisor loop of `dev`: starts the nodes, reports and reaps the
//! ones that exit, answers control requests, and stops every node on
//! Ctrl-C or SIGTERM.
//!
//! Everything that starts a process runs in this loop's future, never in
//! a spawned task, so children are forked by the thread that runs `dev`
//! (their parent-death signal follows that thread; see [`super::process`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};

use super::control::{self, Incoming, Request};
use super::{configs, lock, process, DevArgs};
use crate::client::ApiClient;
use crate::config::ServerConfig;
use crate::plugins::Plugins;

/// How long a node may take to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to stop after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines shown when a node exits.
const TAIL_LINES: usize = 10;

type Reply = oneshot::Sender<Result<String, String>>;

/// What to do when a node's process exits.
#[derive(Debug, Default)]
enum AfterExit {
    /// It was not asked to stop: report it.
    #[default]
    Report,
    /// `stop N` asked for it: answer the client.
    Stopped(Reply),
    /// `restart N` asked for it: start it again, answer once it serves.
    Restart(Reply),
    /// `dev` is stopping: nothing.
    Quiet,
}

#[derive(Debug)]
struct Running {
    pid: u32,
    /// Cleared when the process has exited (and been reaped).
    alive: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Node {
    id: u64,
    url: String,
    /// Its peer address, a seed for the nodes `dev add` starts.
    peer: String,
    config: PathBuf,
    log: PathBuf,
    running: Option<Running>,
    /// Bumped at every start; an exit of an older start is stale.
    generation: u64,
    after_exit: AfterExit,
    last_exit: Option<String>,
}

/// A child's exit, sent by the task that waits for it.
#[derive(Debug)]
struct Exit {
    index: usize,
    generation: u64,
    pid: u32,
    status: std::io::Result<ExitStatus>,
}

struct Cluster {
    exe: PathBuf,
    /// How to name the data directory in printed commands.
    data_dir_arg: String,
    /// Node 1's configuration, which `dev add` derives a new node's from.
    template: ServerConfig,
    /// The CA that certifies the nodes' peer links; `None` with `--plaintext`.
    ca: Option<DevCa>,
    /// The tokens file and admin token of `--auth`.
    tokens: Option<DevTokens>,
    /// HTTP and peer ports of node 1; node i listens on these + i - 1.
    ports: (u16, u16),
    nodes: Vec<Node>,
    exits: mpsc::UnboundedSender<Exit>,
}

use super::auth::DevTokens;

/// With the `transport-tcp` feature and without `--plaintext`: a new CA,
/// and a certificate from it for each node.
#[cfg(feature = "transport-tcp")]
type DevCa = super::tls::DevCa;

/// Without the tcp transport there is no TLS to set up.
#[cfg(not(feature = "transport-tcp"))]
#[derive(Debug)]
enum DevCa {}

#[cfg(not(feature = "transport-tcp"))]
impl DevCa {
    fn secure(&self, _config: &mut ServerConfig) -> anyhow::Result<()> {
        match *self {}
    }
}

/// Makes the cluster's CA and secures every node's peer links with it,
/// unless `--plaintext` (or the tcp transport is not compiled in).
fn secure(args: &DevArgs, configs: &mut [ServerConfig]) -> anyhow::Result<Option<DevCa>> {
    #[cfg(feature = "transport-tcp")]
    if !args.plaintext {
        let ca = DevCa::create(&args.data_dir)?;
        for c in configs.iter_mut() {
            ca.secure(c)?;
        }
        return Ok(Some(ca));
    }
    let _ = (args, configs);
    Ok(None)
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub(super) async fn run(args: DevArgs, plugins: &Plugins) -> anyhow::Result<()> {
    // Every check before anything is written or started.
    plugins.reconciler(&args.reconciler)?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut configs = configs::dev_configs(&args, &args.data_dir)?;
    for c in &configs {
        plugins.check(c)?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let _lock = lock::lock(&args.data_dir)?;
    check_ports(&configs)?;
    let ca = secure(&args, &mut configs)?;
    let tokens = if args.auth {
        let tokens = DevTokens::create(&args.data_dir)?;
        configs.iter_mut().for_each(|c| tokens.require(c));
        Some(tokens)
    } else {
        None
    };
    let listener = control::listen(&args.data_dir)?;
    let (requests_tx, mut requests) = mpsc::channel::<Incoming>(16);
    let control_task = tokio::spawn(control::serve(listener, requests_tx));
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut cluster = Cluster {
        exe,
        data_dir_arg: if args.data_dir == Path::new("dynamo-dev") {
            String::new()
        } else {
            format!(" --data-dir {}", args.data_dir.display())
        },
        template: configs[0].clone(),
        ca,
        tokens,
        ports: (args.http_port, args.peer_port),
        nodes: Vec::with_capacity(configs.len()),
        exits: exits_tx,
    };
    for c in &configs {
        cluster.nodes.push(Node {
            id: c.node_id,
            url: format!("http://{}", c.http.listen),
            peer: c.peer.listen.clone(),
            config: configs::write_config(c)?,
            log: configs::log_path(c),
            running: None,
            generation: 0,
            after_exit: AfterExit::Report,
            last_exit: None,
        });
    }
    let mut shutdown = std::pin::pin!(crate::serve::shutdown_signal());
    let result = async {
        for i in 0..cluster.nodes.len() {
            cluster.start(i)?;
        }
        if !cluster.wait_ready(&mut exits, &mut shutdown).await? {
            return Ok(());
        }
        cluster.print_banner(&configs[0], &args.data_dir);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                Some(exit) = exits.recv() => cluster.on_exit(exit),
                Some((request, reply)) = requests.recv() => cluster.on_request(request, reply),
            }
        }
    }
    .await;
    println!("stopping...");
    control_task.abort();
    control::remove(&args.data_dir);
    cluster.stop_all(&mut exits).await;
    println!("stopped");
    result
}

/// Refuses to start when any node's HTTP or peer port is taken, naming
/// every one that is.
fn check_ports(configs: &[ServerConfig]) -> anyhow::Result<()> {
    let mut taken = Vec::new();
    for c in configs {
        for (what, addr) in [("HTTP", &c.http.listen), ("peer", &c.peer.listen)] {
            if TcpListener::bind(addr.as_str()).is_err() {
                taken.push(format!("{addr} (node {} {what})", c.node_id));
            }
        }
    }
    if !taken.is_empty() {
        bail!(
            "cannot start: in use: {}; is another dev or serve running? (--http-port and --peer-port choose others)",
            taken.join(", ")
        );
    }
    Ok(())
}

impl Cluster {
    fn node_index(&self, id: u64) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| format!("there is no node {id}; this cluster has nodes 1 to {}", self.nodes.len()))
    }

    /// Starts node `i` and a task that reports its exit.
    fn start(&mut self, i: usize) -> anyhow::Result<u32> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let preset = std::env::var_os(process::WORKER_THREADS_ENV);
        let workers = process::worker_threads(cores, self.nodes.len(), preset.as_deref());
        let node = &mut self.nodes[i];
        let mut child = process::spawn(&self.exe, node.id, &node.config, &node.log, workers)?;
        let pid = child.id().unwrap_or(0);
        node.generation += 1;
        let alive = Arc::new(AtomicBool::new(true));
        node.running = Some(Running { pid, alive: alive.clone() });
        let (generation, exits) = (node.generation, self.exits.clone());
        tokio::spawn(async move {
            let status = child.wait().await;
            alive.store(false, Ordering::SeqCst);
            let _ = exits.send(Exit { index: i, generation, pid, status });
        });
        Ok(pid)
    }

    /// Waits until every node answers. `false` if a shutdown came first.
    async fn wait_ready(
        &mut self,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.nodes.len() {
            let client = ApiClient::new(&self.nodes[i].url)?;
            loop {
                tokio::select! {
                    () = &mut *shutdown => return Ok(false),
                    Some(exit) = exits.recv() => {
                        let node = &self.nodes[exit.index];
                        bail!("node {} exited before it was ready: {}", node.id, exit_report(node, &exit));
                    }
                    healthy = tokio::time::timeout(Duration::from_secs(1), client.is_healthy()) => {
                        if healthy == Ok(true) {
                            break;
                        }
                        if Instant::now() > deadline {
                            let node = &self.nodes[i];
                            bail!("node {} did not answer at {} within {} s; see {}", node.id, node.url, READY_TIMEOUT.as_secs(), node.log.display());
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Ok(true)
    }

    fn print_banner(&self, config: &ServerConfig, data_dir: &Path) {
        let c = &config.cluster;
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        println!(
            "dynamo dev cluster: {} nodes, N={} R={} W={}, reconciler {}, data in {}",
            self.nodes.len(),
            c.n,
            c.r,
            c.w,
            config.reconciler,
            data_dir.display()
        );
        match &config.peer.tls {
            Some(tls) => {
                println!("peer links: mutual TLS, certificates from a new CA ({})", tls.ca_file.display())
            }
            None => println!("peer links: PLAINTEXT, unauthenticated (--plaintext)"),
        }
        for node in &self.nodes {
            let pid = node.running.as_ref().map_or(0, |r| r.pid);
            println!("  node {}  {}  pid {}  log {}", node.id, node.url, pid, node.log.display());
        }
        println!("dev reports a node that exits; restart one (it stays dev's child) with:");
        println!(
            "  {} dev restart N{}    (also: stop N, status, add)",
            self.exe.display(),
            self.data_dir_arg
        );
        match &self.tokens {
            None => println!("try:  curl -i -X PUT --data-binary hello {}/kv/greeting", self.nodes[0].url),
            Some(tokens) => {
                let token = tokens.admin_token.display();
                println!("client API: bearer tokens required (--auth); admin token in {token}");
                println!(
                    "try:  curl -i -X PUT -H \"Authorization: Bearer $(cat {token})\" --data-binary hello {}/kv/greeting",
                    self.nodes[0].url
                );
                println!("      {} status --token-file {token}", self.exe.display());
            }
        }
        println!("Ctrl-C stops every node.");
    }

    fn on_exit(&mut self, exit: Exit) {
        let node = &mut self.nodes[exit.index];
        if exit.generation != node.generation {
            return;
        }
        node.running = None;
        node.last_exit = Some(describe_status(&exit.status));
        match std::mem::take(&mut node.after_exit) {
            AfterExit::Report => {
                let node = &self.nodes[exit.index];
                eprintln!("\n{}", exit_report(node, &exit));
                eprintln!(
                    "  restart it: {} dev restart {}{}\n",
                    self.exe.display(),
                    node.id,
                    self.data_dir_arg
                );
            }
            AfterExit::Stopped(reply) => {
                println!("node {} stopped ({})", node.id, describe_status(&exit.status));
                let _ =
                    reply.send(Ok(format!("node {} stopped ({})\n", node.id, describe_status(&exit.status))));
            }
            AfterExit::Restart(reply) => self.restart_now(exit.index, reply),
            AfterExit::Quiet => {}
        }
    }

    fn on_request(&mut self, request: Request, reply: Reply) {
        let (i, restart) = match request {
            Request::Status => {
                let _ = reply.send(Ok(self.status()));
                return;
            }
            Request::Add => {
                self.add(reply);
                return;
            }
            Request::Stop { node } => (self.node_index(node), false),
            Request::Restart { node } => (self.node_index(node), true),
        };
        let i = match i.and_then(|i| self.check_idle(i).map(|()| i)) {
            Ok(i) => i,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let node = &mut self.nodes[i];
        match (&node.running, restart) {
            (None, true) => self.restart_now(i, reply),
            (None, false) => {
                let _ = reply.send(Ok(format!("node {} is not running\n", node.id)));
            }
            (Some(running), true) => {
                terminate(running);
                node.after_exit = AfterExit::Restart(reply);
            }
            (Some(running), false) => {
                terminate(running);
                node.after_exit = AfterExit::Stopped(reply);
            }
        }
    }

    /// Refuses a second stop or restart of a node while one is under way.
    fn check_idle(&self, i: usize) -> Result<(), String> {
        match self.nodes[i].after_exit {
            AfterExit::Report => Ok(()),
            _ => Err(format!("node {} is already being stopped or restarted", self.nodes[i].id)),
        }
    }

    /// Starts node `i` now and answers `reply` once it serves.
    fn restart_now(&mut self, i: usize, reply: Reply) {
        let pid = match self.start(i) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = reply.send(Err(format!("{e:#}")));
                return;
            }
        };
        let node = &self.nodes[i];
        println!("node {} restarted: pid {pid}, log {}", node.id, node.log.display());
        let alive = node.running.as_ref().map(|r| r.alive.clone()).unwrap_or_default();
        let (id, url, log) = (node.id, node.url.clone(), node.log.clone());
        tokio::spawn(async move {
            let answer = wait_serving(&url, &alive)
                .await
                .map(|()| format!("node {id} restarted: pid {pid}, {url}, log {}\n", log.display()));
            let answer = answer.map_err(|e| format!("node {id} (pid {pid}) {e}; see {}", log.display()));
            let _ = reply.send(answer);
        });
    }

    /// `dev add`: writes the next node's config (no member list, the
    /// running nodes as seeds, so it joins by gossip as a member owning
    /// nothing), starts it as a child, and answers once it serves and
    /// node 1 (or the first node running) knows it.
    fn add(&mut self, reply: Reply) {
        let config = match self.next_config() {
            Ok(config) => config,
            Err(e) => {
                let _ = reply.send(Err(format!("{e:#}")));
                return;
            }
        };
        let path = match configs::write_config(&config) {
            Ok(path) => path,
            Err(e) => {
                let _ = reply.send(Err(format!("{e:#}")));
                return;
            }
        };
        self.nodes.push(Node {
            id: config.node_id,
            url: format!("http://{}", config.http.listen),
            peer: config.peer.listen.clone(),
            config: path.clone(),
            log: configs::log_path(&config),
            running: None,
            generation: 0,
            after_exit: AfterExit::Report,
            last_exit: None,
        });
        let i = self.nodes.len() - 1;
        let pid = match self.start(i) {
            Ok(pid) => pid,
            Err(e) => {
                self.nodes.pop();
                let _ = reply.send(Err(format!("{e:#}")));
                return;
            }
        };
        let node = &self.nodes[i];
        println!("node {} added: pid {pid}, {}, log {}", node.id, node.url, node.log.display());
        let alive = node.running.as_ref().map(|r| r.alive.clone()).unwrap_or_default();
        let seed = self.nodes.iter().find(|n| n.running.is_some() && n.id != node.id).map(|n| n.url.clone());
        let (id, url, log) = (node.id, node.url.clone(), node.log.clone());
        let text = format!(
            "node {id} added: pid {pid}, {url}, log {}
  config {} (seeds: {})
  it is a joining member and owns nothing yet; give it partitions with
    {exe} cluster join {id}
    {exe} cluster plan
    {exe} cluster commit
  restart it: {exe} dev restart {id}{}
",
            log.display(),
            path.display(),
            config.cluster.seeds.join(", "),
            self.data_dir_arg,
            exe = self.exe.display(),
        );
        tokio::spawn(async move {
            let mut answer = wait_serving(&url, &alive).await;
            if let (Ok(()), Some(seed)) = (&answer, seed) {
                answer = wait_known(&seed, id).await;
            }
            let answer = answer
                .map(|()| text)
                .map_err(|e| format!("node {id} (pid {pid}) {e}; see {}", log.display()));
            let _ = reply.send(answer);
        });
    }

    /// The configuration of the node `dev add` starts next.
    fn next_config(&self) -> anyhow::Result<ServerConfig> {
        if !self.template.gossips() {
            bail!("this dev cluster has one node, which does not gossip: start dev with --nodes 2 or more to add nodes");
        }
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let index = usize::try_from(id - 1).context("node id")?;
        let data_root = self.template.data_dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut c = self.template.clone();
        c.node_id = id;
        c.data_dir = data_root.join(format!("node-{id}"));
        c.members = Vec::new();
        c.http.listen = format!("127.0.0.1:{}", configs::port(self.ports.0, index)?);
        c.peer.listen = format!("127.0.0.1:{}", configs::port(self.ports.1, index)?);
        c.peer.advertise = None;
        c.cluster.seeds = self.nodes.iter().map(|n| n.peer.clone()).collect();
        c.validate()?;
        check_ports(std::slice::from_ref(&c))?;
        if let Some(ca) = &self.ca {
            ca.secure(&mut c)?;
        }
        Ok(c)
    }

    fn status(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            let state = match (&node.running, &node.last_exit) {
                (Some(r), _) => format!("running  pid {}", r.pid),
                (None, Some(exit)) => format!("stopped  ({exit})"),
                (None, None) => "stopped".to_string(),
            };
            text.push_str(&format!("node {}  {}  {state}  log {}\n", node.id, node.url, node.log.display()));
        }
        text
    }

    /// SIGTERM to every node, SIGKILL to those still running after
    /// [`STOP_TIMEOUT`]; returns once all have been reaped (or a last
    /// grace period passed).
    async fn stop_all(&mut self, exits: &mut mpsc::UnboundedReceiver<Exit>) {
        for node in &mut self.nodes {
            node.after_exit = AfterExit::Quiet;
            if let Some(running) = &node.running {
                process::signal(running.pid, Signal::SIGTERM);
            }
        }
        for (timeout, kill) in [(STOP_TIMEOUT, true), (Duration::from_secs(5), false)] {
            let deadline = tokio::time::Instant::now() + timeout;
            while self.nodes.iter().any(|n| n.running.is_some()) {
                match tokio::time::timeout_at(deadline, exits.recv()).await {
                    Ok(Some(exit)) => self.on_exit(exit),
                    Ok(None) | Err(_) => break,
                }
            }
            if !kill {
                break;
            }
            for node in &self.nodes {
                if let Some(running) = &node.running {
                    eprintln!("node {} did not stop within {} s: SIGKILL", node.id, timeout.as_secs());
                    process::signal(running.pid, Signal::SIGKILL);
                }
            }
        }
    }
}

/// SIGTERM now, SIGKILL if the process still runs after [`STOP_TIMEOUT`].
fn terminate(running: &Running) {
    process::signal(running.pid, Signal::SIGTERM);
    let (pid, alive) = (running.pid, running.alive.clone());
    tokio::spawn(async move {
        tokio::time::sleep(STOP_TIMEOUT).await;
        if alive.load(Ordering::SeqCst) {
            process::signal(pid, Signal::SIGKILL);
        }
    });
}

/// Waits until the node at `url` answers `/health`, while it is `alive`.
async fn wait_serving(url: &str, alive: &AtomicBool) -> Result<(), String> {
    let client = ApiClient::new(url).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if tokio::time::timeout(Duration::from_secs(1), client.is_healthy()).await == Ok(true) {
            return Ok(());
        }
        if !alive.load(Ordering::SeqCst) {
            return Err("exited before it answered".to_string());
        }
        if Instant::now() > deadline {
            return Err(format!("did not answer at {url} within {} s", READY_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the node at `seed_url` lists member `id` (gossip has
/// carried the new node's entry to it), so a `cluster join` sent to it
/// right away knows the node.
async fn wait_known(seed_url: &str, id: u64) -> Result<(), String> {
    let client = ApiClient::new(seed_url).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let members = tokio::time::timeout(Duration::from_secs(1), client.json("/admin/members")).await;
        if let Ok(Ok(members)) = members {
            let listed =
                members["members"].as_array().into_iter().flatten().any(|m| m["id"].as_u64() == Some(id));
            if listed {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "serves, but {seed_url} did not learn of it by gossip within {} s",
                READY_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn describe_status(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown exit: {e}"),
    }
}

/// Which node exited, how, and the last lines of its log.
fn exit_report(node: &Node, exit: &Exit) -> String {
    let mut text = format!(
        "node {} (pid {}) exited: {}; last lines of {}:",
        node.id,
        exit.pid,
        describe_status(&exit.status),
        node.log.display()
    );
    for line in process::tail(&node.log, TAIL_LINES) {
        text.push_str("\n  | ");
        text.push_str(&line);
    }
    text
}
