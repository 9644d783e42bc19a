//! OpenFaaS's own tools, which tests run against faasd: `faas-cli` and the two watchdogs.
//! They are not part of faasd and not built here: each is taken from its environment
//! variable, else from PATH. Tests that need a missing one skip with a message (and fail
//! under `FAASD_TEST_STRICT`).

use std::path::PathBuf;

/// One tool: the variable that names it and the program looked for on PATH.
pub struct Tool {
    pub var: &'static str,
    program: &'static str,
}

pub const FAAS_CLI: Tool = Tool {
    var: "FAAS_CLI",
    program: "faas-cli",
};
pub const OF_WATCHDOG: Tool = Tool {
    var: "OF_WATCHDOG",
    program: "of-watchdog",
};
pub const CLASSIC_WATCHDOG: Tool = Tool {
    var: "CLASSIC_WATCHDOG",
    program: "fwatchdog",
};

impl Tool {
    /// Where the tool is: its variable (which must name a file), else PATH.
    pub fn find(&self) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(self.var) {
            let p = PathBuf::from(p);
            return p.is_file().then_some(p);
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(self.program))
            .find(|p| p.is_file())
    }

    /// As [`Tool::find`], saying what was found or what is missing.
    pub fn report(&self) -> Option<PathBuf> {
        let found = self.find();
        match &found {
            Some(p) => println!("    ✓ {}: {}", self.var, p.display()),
            None => println!(
                "    ✗ {}: not set and no {} on PATH (its tests will not run)",
                self.var, self.program
            ),
        }
        found
    }
}
