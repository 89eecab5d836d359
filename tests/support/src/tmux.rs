//! A real terminal for full-screen views: a tmux server (Debian's package)
//! of the test's own, on its own socket, killed on drop.

use std::process::Command;

use crate::unique;

/// A tmux server with one session, `main`, running a command.
pub struct Tmux(String);

impl Tmux {
    /// Runs `cmdline` (through the shell) in a detached `width`×`height`
    /// terminal. Fails loudly when tmux is missing.
    pub fn run(cmdline: &str, width: u16, height: u16) -> Tmux {
        let found = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "tmux not found: ./scripts/test installs it (Debian package tmux); `apt-get install tmux`"
        );
        let t = Tmux(unique("tmux"));
        let st = t
            .cmd()
            .args(["new-session", "-d", "-s", "main", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(cmdline)
            .status()
            .unwrap();
        assert!(st.success(), "tmux new-session {cmdline}");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0]);
        c
    }

    /// What the terminal shows now.
    pub fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "main"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `k` (a tmux key name: `q`, `Down`, `C-c`).
    pub fn keys(&self, k: &str) {
        assert!(self
            .cmd()
            .args(["send-keys", "-t", "main", k])
            .status()
            .unwrap()
            .success());
    }

    /// Whether the command still runs (its session ends with it).
    pub fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "main"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}
