//! Where faasd keeps per-instance files under its runtime directory. The supervisor writes
//! them and a restarted daemon reads them back, so both take the paths from here.

use std::path::{Path, PathBuf};

use faasd_core::spec::FunctionSpec;

/// Where an instance's stdout and stderr go (see [`crate::logs::Output`]).
pub fn output_path(runtime_dir: &Path, spec: &FunctionSpec, instance: &str) -> PathBuf {
    runtime_dir
        .join("output")
        .join(&spec.namespace)
        .join(&spec.name)
        .join(instance)
}

/// The instances files of one namespace's functions.
pub fn instances_dir(runtime_dir: &Path, namespace: &str) -> PathBuf {
    runtime_dir.join("instances").join(namespace)
}

/// Where the pids of a function's running instances are kept, for a restarted daemon.
pub fn instances_file(runtime_dir: &Path, spec: &FunctionSpec) -> PathBuf {
    instances_dir(runtime_dir, &spec.namespace).join(&spec.name)
}
