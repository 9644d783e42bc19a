//! Where faasd keeps per-instance files under its runtime directory. The supervisor writes
//! them and a restarted daemon reads them back, so both take the paths from here.

use std::path::{Path, PathBuf};

use crate::spec::FunctionSpec;

/// Where an instance's stdout and stderr go (see [`crate::logs::Output`]).
pub fn output_path(runtime_dir: &Path, spec: &FunctionSpec, instance: &str) -> PathBuf {
    runtime_dir
        .join("output")
        .join(&spec.namespace)
        .join(&spec.name)
        .join(instance)
}

/// Where the pids of a function's running instances are kept, for a restarted daemon.
pub fn instances_file(runtime_dir: &Path, spec: &FunctionSpec) -> PathBuf {
    runtime_dir
        .join("instances")
        .join(&spec.namespace)
        .join(&spec.name)
}
