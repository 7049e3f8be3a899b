//! The real binary as a child process, for tests that run it as an operator would.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    child: Child,
    pub base: String,
    pub log: std::sync::mpsc::Receiver<serde_json::Value>,
}

/// Start `blobcache serve` on 127.0.0.1:0 and learn its port from its JSON log.
pub fn start(data_dir: &std::path::Path) -> Server {
    start_with(data_dir, &[], &[])
}

/// `start`, with more flags and environment variables.
pub fn start_with(data_dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
    launch(command(data_dir, args, envs))
}

/// `start_with`, the server limited to `files` open files (as by `ulimit -n`).
pub fn start_with_file_limit(data_dir: &std::path::Path, args: &[&str], files: u64) -> Server {
    use std::os::unix::process::CommandExt;
    let mut cmd = command(data_dir, args, &[]);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    launch(cmd)
}

fn command(data_dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blobcache"));
    // `--listen` among `args` replaces the default (any port).
    let listen: &[&str] = if args.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    cmd.args(["serve", "--log-format", "json", "--disk-cache", "256MiB"])
        .args(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Start the command and learn the server's port from its JSON log.
fn launch(mut cmd: Command) -> Server {
    let mut child = cmd.spawn().expect("start the binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server exited before listening").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if v["message"] == "blobcache listening" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Server {
        child,
        base: format!("http://{addr}"),
        log,
    }
}

impl Server {
    /// The node's /stats.
    pub async fn stats(&self) -> serde_json::Value {
        let resp = reqwest::get(format!("{}/stats", self.base)).await.expect("GET /stats");
        resp.json().await.expect("JSON /stats")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM)
    }

    /// SIGTERM, wait for the exit, and return every log line the server wrote
    /// after it started listening.
    pub fn log_after_terminate(mut self) -> Vec<serde_json::Value> {
        let log = std::mem::replace(&mut self.log, std::sync::mpsc::channel().1);
        let status = self.terminate();
        assert!(status.success(), "{status}");
        let mut lines = Vec::new();
        // The reader thread ends when the child's stdout closes.
        while let Ok(v) = log.recv_timeout(Duration::from_secs(10)) {
            lines.push(v);
        }
        lines
    }

    /// SIGSTOP: the process hangs (sockets open, nothing answered) until `resume`.
    pub fn pause(&self) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) }, 0);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) }, 0);
    }

    /// SIGKILL: no shutdown code runs at all.
    pub fn kill(self) -> std::process::ExitStatus {
        self.signal(libc::SIGKILL)
    }

    fn signal(mut self, signal: libc::c_int) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "no exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a client subcommand of the real binary (`put`, `get`, `warm`, ...)
/// against `url`, in `dir`, with no client settings from the environment;
/// bounded at 60 s.
pub async fn client(dir: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_blobcache"))
        .args(args)
        .current_dir(dir)
        .env("BLOBCACHE_URL", url)
        .env_remove("BLOBCACHE_TOKEN")
        .env_remove("BLOBCACHE_CACERT")
        .env_remove("BLOBCACHE_CERT")
        .env_remove("BLOBCACHE_KEY")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the client finishes within 60 s")
        .expect("run the client")
}
