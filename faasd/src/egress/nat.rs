//! The host's part of calls out: forwarding on, and one nftables table of faasd's own
//! (`inet faasd_egress`, replaced whole each time) that masquerades what instances send
//! out of the platform and lets nothing new in towards them.
//!
//! The table is there only while instances that may call out run (and `egress-nat-idle`
//! after the last; the network namespace pool decides when): the hooks that tracking and
//! NAT register cost every packet of the host, even those the rules below leave
//! untracked, so a host whose functions idle pays none of it.
//!
//! Masquerading puts connection tracking on every packet of the host's namespace, and the
//! traffic of functions' sockets needs none of it: those sockets are the host's own, and
//! nothing about them is translated. So the table also takes traffic to and from function
//! addresses out of tracking, except on instance links and towards instance addresses,
//! whose replies the rules below must still recognise. A SYN flood at a function then
//! costs no tracking entry per SYN (`cargo xtask bench lookup` measures both), and cannot
//! fill the host's tracking table.

use std::io::Write;

use faasd_core::config::Config;

use super::{EgressError, netns::HOST_LINK_PREFIX};

/// The table's name.
pub const TABLE: &str = "faasd_egress";

/// The ruleset: instance IPv4 is masqueraded whenever it leaves the host; instance IPv6
/// only when it leaves the platform prefix (other functions see the instance's own
/// address). Towards an instance only replies pass, forwarded or from the host itself
/// (and neighbour discovery): ingress reaches functions only through the sockets faasd
/// passes. Function addresses are not tracked (see the module's notes).
pub fn ruleset(config: &Config) -> String {
    let (platform, len) = faasd_common::plan::PLATFORM_PREFIX;
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain untracked_in {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname != \"{HOST_LINK_PREFIX}*\" ip6 daddr {platform}/{len} ip6 daddr != {v6} counter notrack\n\
         \t}}\n\
         \tchain untracked_out {{\n\
         \t\ttype filter hook output priority raw; policy accept;\n\
         \t\toifname != \"{HOST_LINK_PREFIX}*\" ip6 daddr {platform}/{len} ip6 daddr != {v6} counter notrack\n\
         \t\toifname != \"{HOST_LINK_PREFIX}*\" ip6 saddr {platform}/{len} ip6 daddr != {v6} counter notrack\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{HOST_LINK_PREFIX}*\" return\n\
         \t\tip saddr {v4} masquerade\n\
         \t\tip6 saddr {v6} ip6 daddr != {platform}/{len} masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\toifname \"{HOST_LINK_PREFIX}*\" ct state established,related accept\n\
         \t\toifname \"{HOST_LINK_PREFIX}*\" drop\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname \"{HOST_LINK_PREFIX}*\" ct state established,related accept\n\
         \t\toifname \"{HOST_LINK_PREFIX}*\" meta l4proto ipv6-icmp accept\n\
         \t\toifname \"{HOST_LINK_PREFIX}*\" drop\n\
         \t}}\n\
         }}\n",
        v4 = config.egress_ipv4,
        v6 = config.egress_ipv6,
    )
}

/// Turns forwarding on and installs the table.
pub fn install(config: &Config) -> Result<(), EgressError> {
    enable_forwarding()?;
    nft(&ruleset(config))
}

/// Removes the table, if it is there; connection tracking stops with its last user.
pub fn remove() -> Result<(), EgressError> {
    nft(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n"))
}

fn enable_forwarding() -> Result<(), EgressError> {
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        std::fs::write(path, "1").map_err(|source| EgressError::Sysctl { path, source })?;
    }
    Ok(())
}

/// Runs an nft script.
fn nft(script: &str) -> Result<(), EgressError> {
    let mut nft = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(EgressError::Nat)?;
    nft.stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(EgressError::Nat)?;
    let out = nft.wait_with_output().map_err(EgressError::Nat)?;
    if !out.status.success() {
        return Err(EgressError::NatRefused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}
