//! A real Mosquitto broker on a free loopback port, for tests. Killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's broker binary (package `mosquitto`).
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub struct Mosquitto {
    port: u16,
    dir: PathBuf,
    /// Removes `dir` when the broker is dropped.
    _tmp: tempfile::TempDir,
    child: Option<Child>,
    /// Extra `mosquitto.conf` lines (limits under test).
    extra_conf: String,
    /// With authentication: the password file (written in `dir`) and the ACL file.
    auth: Option<(PathBuf, PathBuf)>,
}

/// Debian's password tool (package `mosquitto`): writes salted hashes, as an operator would.
const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

pub use crate::free_port;

impl Mosquitto {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port())
    }

    /// Starts a broker on `port` and waits until it accepts connections.
    pub fn start_on(port: u16) -> Mosquitto {
        Mosquitto::start_with(port, "")
    }

    /// Starts a broker on `port` with `extra_conf` appended to its configuration.
    pub fn start_with(port: u16, extra_conf: &str) -> Mosquitto {
        let tmp = crate::temp_dir("mosquitto");
        let mut m = Mosquitto {
            port,
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            child: None,
            extra_conf: extra_conf.to_string(),
            auth: None,
        };
        m.spawn();
        m
    }

    /// Starts a broker on a free port that lets in only `users` (name, password), each
    /// limited by `acl_file`: `allow_anonymous false`, a `password_file` written with
    /// `mosquitto_passwd` and the given `acl_file`, and `extra_conf` appended.
    pub fn start_with_auth(users: &[(&str, &str)], acl_file: &Path, extra_conf: &str) -> Mosquitto {
        let tmp = crate::temp_dir("mosquitto");
        let passwd = tmp.path().join("passwd");
        std::fs::write(&passwd, "").expect("create the password file");
        for (user, password) in users {
            let status = Command::new(MOSQUITTO_PASSWD)
                .arg("-b")
                .arg(&passwd)
                .arg(user)
                .arg(password)
                .stdin(Stdio::null())
                .status()
                .expect("run /usr/bin/mosquitto_passwd (Debian package `mosquitto`)");
            assert!(
                status.success(),
                "mosquitto_passwd for {user} failed: {status}"
            );
        }
        let mut m = Mosquitto {
            port: free_port(),
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            child: None,
            extra_conf: extra_conf.to_string(),
            auth: Some((passwd, acl_file.to_path_buf())),
        };
        m.spawn();
        m
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let access = match &self.auth {
            None => "allow_anonymous true\n".to_string(),
            Some((passwd, acl)) => format!(
                "allow_anonymous false\npassword_file {}\nacl_file {}\n",
                passwd.display(),
                acl.display()
            ),
        };
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\n{access}persistence false\nlog_dest stderr\nlog_type all\n{}\n",
                self.port, self.extra_conf
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .expect("open the broker log");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/mosquitto (Debian package `mosquitto`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("mosquitto exited with {status}; log:\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not accept on port {}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (as a crash would: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port. Without persistence it has forgotten
    /// every retained message and subscription.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
