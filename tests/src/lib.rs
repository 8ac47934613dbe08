//! Test harness for fleet: real etcd servers, real systemd machines booted with
//! `systemd-nspawn` from the host's own `/usr`, each in its own network namespace,
//! and the clusters built from them. Contract suites and end-to-end scenarios live
//! in `tests/tests/`.
//!
//! Layout:
//! - [`cluster`]: etcd plus N machines running fleetd as a systemd service.
//! - [`etcd`]: start and stop a real etcd on free ports with a temporary data dir.
//! - [`http`]: one HTTP/1.1 request over TCP, for the API end to end.
//! - [`bench`](mod@bench): settings and an etcd-backed registry for `tests/examples/`.
//! - [`net`]: a bridge plus one network namespace per machine, with cut/heal.
//! - [`machine`]: boot a systemd machine, reach its D-Bus, run commands in it.
//! - [`ssh`]: an ssh-agent, keys and sshd in a machine, for fleetctl's SSH paths.
//! - [`util`]: free ports, waiting with deadlines, missing-tool errors.

pub mod bench;
pub mod cluster;
pub mod etcd;
pub mod http;
pub mod machine;
pub mod net;
pub mod ssh;
pub mod util;
