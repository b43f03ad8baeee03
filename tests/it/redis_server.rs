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
