//! A real `redis-server` for tests: its own free port and its own temporary directory,
//! killed when dropped. Tests share nothing, so they run in parallel.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to answer PING before the test fails.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at finding a port: another test may take a free port before Redis binds it.
const PORT_ATTEMPTS: usize = 5;

const NOT_FOUND: &str =
    "redis-server not found: install it (apt-get install redis-server) or run the README's test command";

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    /// Cluster bus port, when the server runs as a one-node Redis Cluster.
    bus_port: Option<u16>,
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments after the defaults (later ones win), e.g.
    /// `["--appendonly", "yes", "--appendfsync", "always"]` for data that survives
    /// [`RedisServer::restart`].
    pub fn start_with(args: &[&str]) -> RedisServer {
        RedisServer::launch(args, false)
    }

    /// Starts a one-node Redis Cluster owning all 16384 slots: real cluster semantics
    /// (routing by slot, `CROSSSLOT` refusals) without a six-node setup.
    pub fn start_cluster() -> RedisServer {
        RedisServer::launch(&[], true)
    }

    fn launch(args: &[&str], cluster: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let bus_port = cluster.then(free_port);
            let mut child = spawn(port, bus_port, &args, dir.path());
            let ready = wait_ready(&mut child, port).and_then(|()| match bus_port {
                Some(_) => form_cluster(port),
                None => Ok(()),
            });
            match ready {
                Ok(()) => return RedisServer { child: Some(child), port, args, bus_port, dir },
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("{e}\n{}", log_tail(dir.path()));
                }
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts: {last_error}");
    }

    /// Starts a server that syncs a new replica at once ([`RedisServer::start`] would
    /// wait five seconds, Redis's `repl-diskless-sync-delay`, for more replicas to join).
    pub fn start_primary() -> RedisServer {
        RedisServer::start_with(&["--repl-diskless-sync-delay", "0"])
    }

    /// Starts a replica of `primary` (without persistence, like it) and waits until it
    /// holds the primary's data and the primary counts it. `primary` should come from
    /// [`RedisServer::start_primary`].
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        replica.wait_replicating(primary);
        replica
    }

    /// Waits until this replica's link to `primary` is up and `primary` lists it: after
    /// [`RedisServer::start_replica_of`], or a [`RedisServer::restart`] of the replica.
    pub fn wait_replicating(&self, primary: &RedisServer) {
        let deadline = Instant::now() + 2 * STARTUP_TIMEOUT;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            let replica = info_replication(self.port);
            let master = info_replication(primary.port);
            let linked = replica.as_ref().is_ok_and(|i| i.contains("master_link_status:up"));
            let listed = master.as_ref().is_ok_and(|i| i.contains(&format!("port={},state=online", self.port)));
            // Listed is not yet acknowledging: for a moment after a sync the replica
            // confirms nothing. A write it confirms is what a test needs.
            if linked && listed && confirms_writes(primary.port) {
                return;
            }
            last = format!("{replica:?} / {master:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the replica on port {} did not sync within {:?}: {last}", self.port, 2 * STARTUP_TIMEOUT);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: no chance to save anything on the way out).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if running and starts it again on the same port and directory,
    /// so an append-only file written before comes back.
    pub fn restart(&mut self) {
        self.stop();
        let mut child = spawn(self.port, self.bus_port, &self.args, self.dir.path());
        let ready = wait_ready(&mut child, self.port).and_then(|()| match self.bus_port {
            // The node keeps its slots in nodes.conf; it only has to come back up.
            Some(_) => wait_cluster_ok(self.port),
            None => Ok(()),
        });
        if let Err(e) = ready {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server did not restart on port {}: {e}\n{}", self.port, log_tail(self.dir.path()));
        }
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn spawn(port: u16, bus_port: Option<u16>, extra: &[String], dir: &Path) -> Child {
    let log = dir.join("redis.log");
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log);
    if let Some(bus) = bus_port {
        cmd.args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .arg("--cluster-port")
            .arg(bus.to_string())
            .args(["--cluster-announce-ip", "127.0.0.1"]);
    }
    cmd.args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("{NOT_FOUND}"),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

/// Waits until the server `child` started answers on `port`. Checking the process id
/// in `INFO` makes sure the answer comes from this server and not from another test's
/// server that took the port first.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server on port {port} exited: {status}"));
        }
        match ping_pid(&client) {
            Ok(pid) if pid == child.id() => return Ok(()),
            Ok(pid) => return Err(format!("port {port} is served by another redis-server (pid {pid})")),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("redis-server on port {port} did not answer PING within {STARTUP_TIMEOUT:?}: {last}"))
}

/// Gives the lone node every slot and waits until it says the cluster is up.
fn form_cluster(port: u16) -> Result<(), String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(1)).map_err(|e| e.to_string())?;
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query(&mut con)
        .map_err(|e| format!("CLUSTER ADDSLOTSRANGE: {e}"))?;
    wait_cluster_ok(port)
}

/// Waits until `CLUSTER INFO` reports `cluster_state:ok`.
fn wait_cluster_ok(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let info = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut con| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut con));
        match info {
            Ok(info) if info.contains("cluster_state:ok") => return Ok(()),
            Ok(info) => last = info.lines().next().unwrap_or_default().to_owned(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("cluster on port {port} not ok within {STARTUP_TIMEOUT:?}: {last}"))
}

/// Whether a replica of the server on `port` confirms a write (`PUBLISH`, which reaches
/// replicas without leaving a key behind) within `WAIT`'s 200 ms.
fn confirms_writes(port: u16) -> bool {
    let confirmed = redis::Client::open(format!("redis://127.0.0.1:{port}/")).and_then(|client| {
        let mut con = client.get_connection_with_timeout(Duration::from_millis(200))?;
        redis::cmd("PUBLISH").arg("replication-probe").arg("?").query::<i64>(&mut con)?;
        redis::cmd("WAIT").arg(1).arg(200).query::<i64>(&mut con)
    });
    confirmed.is_ok_and(|n| n >= 1)
}

/// `INFO replication` of the server on `port`.
fn info_replication(port: u16) -> Result<String, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut con = client.get_connection_with_timeout(Duration::from_millis(200)).map_err(|e| e.to_string())?;
    redis::cmd("INFO").arg("replication").query(&mut con).map_err(|e| e.to_string())
}

/// PINGs the server and returns its process id.
fn ping_pid(client: &redis::Client) -> Result<u32, String> {
    let mut con = client.get_connection_with_timeout(Duration::from_millis(200)).map_err(|e| e.to_string())?;
    let pong: String = redis::cmd("PING").query(&mut con).map_err(|e| e.to_string())?;
    if pong != "PONG" {
        return Err(format!("PING answered {pong:?}"));
    }
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).map_err(|e| e.to_string())?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| "INFO without process_id".to_owned())
}

/// The end of the server's log, for failure messages.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(10);
    format!("redis.log:\n{}", lines[from..].join("\n"))
}

/// How long a silent node has before the others mark it failed and its replica takes
/// over. Short, so a failover fits in a test; not so short that a node starved of CPU for
/// a moment on a busy two-core machine is taken for dead.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1500;
/// How long a six-node cluster gets to form, or to settle after a failover.
const CLUSTER_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster of three masters, each with one replica: six `redis-server`
/// processes on free ports, each in its own directory, all killed when dropped.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    /// The arguments every node runs with.
    args: Vec<String>,
}

struct ClusterNode {
    child: Option<Child>,
    port: u16,
    bus_port: u16,
    dir: tempfile::TempDir,
}

/// One node as a line of `CLUSTER NODES` describes it.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Marked failed (`fail`, not only suspected) by the node that was asked.
    pub failed: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges served, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(from, to)| (from..=to).contains(&slot))
    }
}

#[allow(dead_code)]
impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create … --cluster-replicas 1`
    /// and waits until every node says the cluster is ok and every replica is in sync.
    pub fn start() -> RedisCluster {
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match RedisCluster::try_start() {
                Ok(cluster) => return cluster,
                Err(e) => last_error = e,
            }
        }
        panic!("the Redis Cluster did not form after {PORT_ATTEMPTS} attempts: {last_error}");
    }

    fn try_start() -> Result<RedisCluster, String> {
        let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
        // A replica's first sync starts at once instead of waiting for more replicas.
        let args: Vec<String> = ["--cluster-node-timeout", &timeout, "--repl-diskless-sync-delay", "0"]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        let mut ports = std::collections::BTreeSet::new();
        while ports.len() < 12 {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let mut cluster = RedisCluster { nodes: Vec::new(), args };
        for pair in ports.chunks(2) {
            let dir = tempfile::tempdir().expect("temporary directory for redis-server");
            let child = spawn(pair[0], Some(pair[1]), &cluster.args, dir.path());
            cluster.nodes.push(ClusterNode { child: Some(child), port: pair[0], bus_port: pair[1], dir });
        }
        for node in &mut cluster.nodes {
            let child = node.child.as_mut().expect("just started");
            wait_ready(child, node.port).map_err(|e| format!("{e}\n{}", log_tail(node.dir.path())))?;
        }
        cluster.create()?;
        cluster.wait_formed()?;
        Ok(cluster)
    }

    /// `redis-cli --cluster create`: slots split in three, one replica per master.
    fn create(&self) -> Result<(), String> {
        let addrs: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "redis-cli --cluster create failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("redis-cli not found: {NOT_FOUND}"),
            Err(e) => panic!("cannot run redis-cli: {e}"),
        }
    }

    /// Waits until every node sees six nodes and all slots served, and every replica's
    /// link to its master is up with its first sync done.
    fn wait_formed(&self) -> Result<(), String> {
        let deadline = Instant::now() + CLUSTER_SETTLE_TIMEOUT;
        let mut last = String::from("not asked yet");
        while Instant::now() < deadline {
            match self.formed() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("cluster not formed within {CLUSTER_SETTLE_TIMEOUT:?}: {last}"))
    }

    fn formed(&self) -> Result<(), String> {
        for node in &self.nodes {
            let info = query(node.port, &["CLUSTER", "INFO"])?;
            for wanted in ["cluster_state:ok", "cluster_slots_ok:16384", "cluster_known_nodes:6"] {
                if !info.lines().any(|l| l.trim() == wanted) {
                    return Err(format!("node {} lacks {wanted}", node.port));
                }
            }
            let replication = query(node.port, &["INFO", "replication"])?;
            if replication.contains("role:slave")
                && !(replication.contains("master_link_status:up") && replication.contains("master_sync_in_progress:0"))
            {
                return Err(format!("replica {} is not in sync", node.port));
            }
        }
        let views = self.view()?;
        let masters = views.iter().filter(|v| v.master).count();
        if masters != 3 {
            return Err(format!("{masters} masters instead of 3"));
        }
        Ok(())
    }

    /// The ports of the nodes started, killed ones included.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// One `redis://` URL per node, for `store.urls`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}/", n.port)).collect()
    }

    /// The ports of the processes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// `CLUSTER NODES` as the first live node sees it.
    pub fn view(&self) -> Result<Vec<NodeView>, String> {
        let port = *self.live_ports().first().ok_or("no node is running")?;
        Ok(parse_cluster_nodes(&query(port, &["CLUSTER", "NODES"])?))
    }

    /// The slot of `key` (hash tags included).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = *self.live_ports().first().expect("a running node");
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
        let mut con = client.get_connection_with_timeout(Duration::from_secs(1)).expect("connect");
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut con).expect("CLUSTER KEYSLOT")
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key);
        let views = self.view().expect("CLUSTER NODES");
        views
            .iter()
            .find(|v| v.master && !v.failed && v.serves(slot))
            .map(|v| v.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {views:?}"))
    }

    /// The port of the replica of the master on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let views = self.view().expect("CLUSTER NODES");
        let master = views.iter().find(|v| v.port == port).expect("a known node");
        views
            .iter()
            .find(|v| v.master_id.as_deref() == Some(master.id.as_str()))
            .map(|v| v.port)
            .unwrap_or_else(|| panic!("no replica of {port}: {views:?}"))
    }

    /// SIGKILLs the node on `port`: nothing it has not yet sent its replica survives.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed node on `port` again over its own directory, as an operator (or
    /// its service manager) would: it has lost its slots, so it rejoins as the replica of
    /// the master that replaced it. Returns once all six nodes agree and it is in sync.
    pub fn restart(&mut self, port: u16) {
        let args = self.args.clone();
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        assert!(node.child.is_none(), "node {port} is still running");
        let mut child = spawn(port, Some(node.bus_port), &args, node.dir.path());
        wait_ready(&mut child, port).unwrap_or_else(|e| panic!("{e}\n{}", log_tail(node.dir.path())));
        node.child = Some(child);
        self.wait_formed().unwrap_or_else(|e| panic!("node {port} did not rejoin: {e}"));
    }

    /// Freezes the node on `port` (SIGSTOP): it reads nothing, so its master keeps
    /// acknowledging writes that it has not received.
    pub fn pause(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// Lets a node frozen by [`RedisCluster::pause`] run again (SIGCONT).
    pub fn resume(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    fn signal(&self, port: u16, signal: &str) {
        let node = self.nodes.iter().find(|n| n.port == port).expect("a node of this cluster");
        let pid = node.child.as_ref().expect("a running node").id().to_string();
        let status = Command::new("kill").arg(signal).arg(&pid).status().expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Waits until every live node says the cluster is ok and that each slot is served
    /// by a live master: after a kill, the replica has been promoted and everyone knows.
    pub fn wait_settled(&self) {
        let deadline = Instant::now() + CLUSTER_SETTLE_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.settled() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the cluster did not settle within {CLUSTER_SETTLE_TIMEOUT:?}: {last}");
    }

    fn settled(&self) -> Result<(), String> {
        let live = self.live_ports();
        for &port in &live {
            let info = query(port, &["CLUSTER", "INFO"])?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(format!("node {port} says the cluster is not ok"));
            }
            let views = parse_cluster_nodes(&query(port, &["CLUSTER", "NODES"])?);
            let served: u32 = views
                .iter()
                .filter(|v| v.master && !v.failed && live.contains(&v.port))
                .flat_map(|v| v.slots.iter().map(|&(from, to)| u32::from(to - from) + 1))
                .sum();
            if served != 16384 {
                return Err(format!("node {port} sees {served} slots served by live masters"));
            }
        }
        Ok(())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One command to the node on `port`, its answer as text.
fn query(port: u16, args: &[&str]) -> Result<String, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut con = client.get_connection_with_timeout(Duration::from_millis(500)).map_err(|e| format!("{port}: {e}"))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut con).map_err(|e| format!("{port} {}: {e}", args.join(" ")))
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus[,host]> <flags> <master|-> <ping> <pong>
/// <epoch> <link> <slot ranges…>`; slots being imported or migrated (`[…]`) are skipped.
fn parse_cluster_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let port = fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((from, to)) => Some((from.parse().ok()?, to.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeView {
                id: fields[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                failed: flags.contains(&"fail"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}
