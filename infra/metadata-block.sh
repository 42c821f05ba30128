#!/bin/sh
# Keeps jobs' users (the uids FIRST-LAST given as the one argument) from the
# machine's metadata service, where its role's credentials are: EC2's and
# GCE's IPv4 address (which metadata.google.internal names), EC2's IPv6
# one and GCE's. Firewall rules do not survive a reboot, so the machine runs
# this at every boot (studio-metadata-block.service), before the worker;
# and the worker checks, as a job's user, that no endpoint answers before
# it starts a script. Safe to run again: a rule already there is kept.
set -eu
range=${1:?usage: metadata-block FIRST-LAST}

# Amazon Linux 2023 (EC2's default image) and some minimal images ship no
# iptables: it is installed here, at the first boot, or the unit fails
# loudly (and the worker, which requires it, does not start).
if ! command -v iptables >/dev/null 2>&1; then
    if command -v dnf >/dev/null 2>&1; then
        dnf install -y -q iptables-nft
    elif command -v apt-get >/dev/null 2>&1; then
        apt-get update -q && apt-get install -y -q iptables
    fi
fi
command -v iptables >/dev/null 2>&1 || {
    echo "metadata-block: no iptables here and none could be installed: jobs would reach the machine's credentials" >&2
    exit 1
}

# Inserted first in OUTPUT, so no earlier ACCEPT rule lets a job through.
block() {
    "$1" -w -C OUTPUT -d "$2" -m owner --uid-owner "$range" -j REJECT 2>/dev/null \
        || "$1" -w -I OUTPUT 1 -d "$2" -m owner --uid-owner "$range" -j REJECT
}

block iptables 169.254.169.254
if command -v ip6tables >/dev/null 2>&1; then
    for address in fd00:ec2::254 fd20:ce::254; do
        # A machine without IPv6 has no such endpoint to reach (the
        # worker's check still tries it).
        block ip6tables "$address" || echo "metadata-block: no IPv6 rule for $address (no IPv6 here?)" >&2
    done
fi
