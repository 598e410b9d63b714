#!/usr/bin/env python3
"""The classic group protocol state by state, on the wire: kafka-python's own encoders and
decoders (its protocol classes) over plain sockets, one per member, so that a JoinGroup can
stay parked on one connection while another member goes on. Walks a group through Dead,
Empty, CompletingRebalance, Stable and PreparingRebalance and checks what each state answers
(the table in cloud-broker/src/coordinator/mod.rs): MEMBER_ID_REQUIRED and the rejoin, the
heartbeat in each state, SyncGroup parked until the leader's, an OffsetCommit of the current
generation accepted while the group is PreparingRebalance and refused with
REBALANCE_IN_PROGRESS in CompletingRebalance, simple (generation -1) commits accepted only
when the group has no members, LeaveGroup. Exits non-zero on the first mismatch."""
import argparse
import select
import socket
import struct
import sys
import time

from kafka import KafkaAdminClient, TopicPartition
from kafka.protocol.admin import DescribeGroupsRequest, DescribeGroupsResponse
from kafka.protocol.consumer import (
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, OffsetCommitRequest, OffsetCommitResponse, SyncGroupRequest, SyncGroupResponse,
)

# Request versions: JoinGroup v7 (flexible, nullable protocol type and name), SyncGroup v5
# (protocol type and name), Heartbeat v4, LeaveGroup v4 (a list of members), OffsetCommit v8,
# DescribeGroups v5.
V_JOIN, V_SYNC, V_HB, V_LEAVE, V_COMMIT, V_DESCRIBE = 7, 5, 4, 4, 8, 5
NONE, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS, MEMBER_ID_REQUIRED = 0, 22, 25, 27, 79
NAMES = {0: "NONE", 22: "ILLEGAL_GENERATION", 25: "UNKNOWN_MEMBER_ID", 27: "REBALANCE_IN_PROGRESS",
         79: "MEMBER_ID_REQUIRED"}


def fail(msg):
    print(f"kp_group_protocol: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(what, got, want):
    if got != want:
        fail(f"{what}: got {NAMES.get(got, got)}, expected {NAMES.get(want, want)}")


class Conn:
    """One client connection: requests go out at once; responses are read in order."""

    def __init__(self, bootstrap, client_id):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.client_id = client_id
        self.corr = 0
        self.outstanding = []  # (correlation id, response class, version)

    def send(self, req, resp_cls, version):
        self.corr += 1
        req.with_header(correlation_id=self.corr, client_id=self.client_id)
        self.sock.sendall(req.encode(version=version, header=True, framed=True))
        self.outstanding.append((self.corr, resp_cls, version))

    def ready(self):
        """Whether a response is waiting to be read."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def _read(self, n, deadline):
        buf = b""
        while len(buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                fail(f"{self.client_id}: no response within the deadline")
            if not chunk:
                fail(f"{self.client_id}: the broker closed the connection")
            buf += chunk
        return buf

    def recv(self, timeout_s=15):
        corr, resp_cls, version = self.outstanding.pop(0)
        deadline = time.monotonic() + timeout_s
        (size,) = struct.unpack(">i", self._read(4, deadline))
        resp = resp_cls.decode(self._read(size, deadline), version=version, header=True)
        if resp.header.correlation_id != corr:
            fail(f"{self.client_id}: correlation id {resp.header.correlation_id}, expected {corr}")
        return resp

    def call(self, req, resp_cls, version):
        self.send(req, resp_cls, version)
        return self.recv()


class Member:
    """A group member speaking the protocol itself."""

    def __init__(self, a, client_id):
        self.a, self.conn, self.id, self.generation = a, Conn(a.bootstrap, client_id), "", -1
        self.meta = f"meta-{client_id}".encode()

    def send_join(self):
        req = JoinGroupRequest(
            group_id=self.a.group, session_timeout_ms=10_000, rebalance_timeout_ms=10_000, member_id=self.id,
            group_instance_id=None, protocol_type="consumer",
            protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=self.meta)],
        )
        self.conn.send(req, JoinGroupResponse, V_JOIN)

    def join_answer(self):
        r = self.conn.recv()
        if r.error_code == NONE:
            self.generation = r.generation_id
        if r.member_id:
            self.id = r.member_id
        return r

    def join_for_id(self):
        """JoinGroup without a member id: MEMBER_ID_REQUIRED with the id to rejoin with."""
        self.send_join()
        r = self.join_answer()
        expect(f"{self.conn.client_id}: JoinGroup without a member id", r.error_code, MEMBER_ID_REQUIRED)
        if not self.id.startswith(self.conn.client_id + "-"):
            fail(f"member id {self.id!r} is not the client id and a UUID")

    def send_sync(self, assignments=()):
        req = SyncGroupRequest(
            group_id=self.a.group, generation_id=self.generation, member_id=self.id, group_instance_id=None,
            protocol_type="consumer", protocol_name="range",
            assignments=[SyncGroupRequest.SyncGroupRequestAssignment(member_id=m, assignment=b)
                         for m, b in assignments],
        )
        self.conn.send(req, SyncGroupResponse, V_SYNC)

    def heartbeat(self, generation=None):
        req = HeartbeatRequest(group_id=self.a.group, generation_id=self.generation if generation is None else generation,
                               member_id=self.id, group_instance_id=None)
        return self.conn.call(req, HeartbeatResponse, V_HB).error_code

    def commit(self, offset, generation=None, member_id=None):
        """OffsetCommit of partition 0; returns its error code."""
        req = OffsetCommitRequest(
            group_id=self.a.group, generation_id_or_member_epoch=self.generation if generation is None else generation,
            member_id=self.id if member_id is None else member_id, group_instance_id=None,
            topics=[OffsetCommitRequest.OffsetCommitRequestTopic(
                name=self.a.topic,
                partitions=[OffsetCommitRequest.OffsetCommitRequestTopic.OffsetCommitRequestPartition(
                    partition_index=0, committed_offset=offset, committed_leader_epoch=-1, committed_metadata="")],
            )],
        )
        r = self.conn.call(req, OffsetCommitResponse, V_COMMIT)
        return r.topics[0].partitions[0].error_code

    def leave(self):
        req = LeaveGroupRequest(group_id=self.a.group,
                                members=[LeaveGroupRequest.MemberIdentity(member_id=self.id, group_instance_id=None)])
        r = self.conn.call(req, LeaveGroupResponse, V_LEAVE)
        if r.error_code != NONE:
            return r.error_code
        return r.members[0].error_code


def describe(conn, group):
    r = conn.call(DescribeGroupsRequest(groups=[group], include_authorized_operations=False),
                  DescribeGroupsResponse, V_DESCRIBE)
    g = r.groups[0]
    if g.error_code != NONE:
        fail(f"DescribeGroups error {g.error_code}")
    return g


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", default="raw-protocol")
    ap.add_argument("--group", default="raw-protocol")
    a = ap.parse_args()

    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, request_timeout_ms=10_000)
    admin.create_topics({a.topic: {"num_partitions": 1, "replication_factor": 1}})
    x = Conn(a.bootstrap, "raw-admin")

    def state():
        return describe(x, a.group).group_state

    def expect_state(want):
        got = state()
        if got != want:
            fail(f"group state {got}, expected {want}")

    def wait_state(want, timeout_s=10):
        """For a request sent on another connection, which the broker may not have read yet."""
        deadline = time.monotonic() + timeout_s
        while (got := state()) != want:
            if time.monotonic() > deadline:
                fail(f"group state still {got} after {timeout_s} s, expected {want}")
            time.sleep(0.02)

    # Dead: nothing known. A simple commit (generation -1, no member id) is accepted and makes
    # the group known by its offsets: Empty.
    expect_state("Dead")
    a_ = Member(a, "raw-a")
    expect("Heartbeat to a Dead group", a_.heartbeat(0), UNKNOWN_MEMBER_ID)
    expect("simple commit to a Dead group", a_.commit(1, generation=-1, member_id=""), NONE)
    expect_state("Empty")

    # First member: MEMBER_ID_REQUIRED, then the rejoin waits for the initial delay.
    a_.join_for_id()
    sent = time.monotonic()
    a_.send_join()
    r = a_.join_answer()
    # A lower bound only (a slow machine makes it longer, never shorter).
    if time.monotonic() - sent < 0.45:
        fail(f"the first JoinGroup was answered after {time.monotonic() - sent:.3f} s, within the 500 ms initial delay")
    expect("JoinGroup of the first member", r.error_code, NONE)
    if (r.generation_id, r.leader, [m.member_id for m in r.members]) != (1, a_.id, [a_.id]):
        fail(f"first generation: {r}")
    if (r.protocol_type, r.protocol_name) != ("consumer", "range"):
        fail(f"JoinGroup v7 protocol type/name: {r.protocol_type!r}/{r.protocol_name!r}")

    # CompletingRebalance: heartbeats are fine, commits wait for the assignment.
    expect_state("CompletingRebalance")
    expect("Heartbeat in CompletingRebalance", a_.heartbeat(), NONE)
    expect("OffsetCommit in CompletingRebalance", a_.commit(2), REBALANCE_IN_PROGRESS)

    # The leader's SyncGroup: Stable.
    a_.send_sync([(a_.id, b"assign-a")])
    s = a_.conn.recv()
    expect("leader's SyncGroup", s.error_code, NONE)
    if (s.assignment, s.protocol_type, s.protocol_name) != (b"assign-a", "consumer", "range"):
        fail(f"SyncGroup answer {s}")
    g = describe(x, a.group)
    if (g.group_state, g.protocol_type, g.protocol_data) != ("Stable", "consumer", "range"):
        fail(f"DescribeGroups when stable: {g}")
    m = g.members[0]
    if (m.member_id, m.client_id, m.client_host, m.member_metadata, m.member_assignment) != (
            a_.id, "raw-a", "/127.0.0.1", a_.meta, b"assign-a"):
        fail(f"DescribeGroups member: {m}")

    # Stable: members of the generation commit; simple commits are refused with members around.
    expect("OffsetCommit in Stable", a_.commit(3), NONE)
    expect("simple commit to a group with members", a_.commit(4, generation=-1, member_id=""), UNKNOWN_MEMBER_ID)
    expect("Heartbeat of another generation", a_.heartbeat(0), ILLEGAL_GENERATION)

    # A second member joins: PreparingRebalance, its JoinGroup parked until a rejoins.
    b_ = Member(a, "raw-b")
    b_.join_for_id()
    b_.send_join()
    wait_state("PreparingRebalance")
    # The member of the current generation may still commit (Kafka relies on the heartbeat to
    # tell it of the rebalance); this was REBALANCE_IN_PROGRESS before.
    expect("OffsetCommit of the current generation in PreparingRebalance", a_.commit(5), NONE)
    expect("Heartbeat in PreparingRebalance", a_.heartbeat(), REBALANCE_IN_PROGRESS)
    a_.send_sync()
    expect("SyncGroup in PreparingRebalance", a_.conn.recv().error_code, REBALANCE_IN_PROGRESS)
    if b_.conn.ready():
        fail("the newcomer's JoinGroup was answered before the old member rejoined")

    # a rejoins: the join completes, generation 2, a still the leader with both members.
    a_.send_join()
    ra, rb = a_.join_answer(), b_.join_answer()
    if (ra.error_code, rb.error_code, ra.generation_id, rb.generation_id) != (NONE, NONE, 2, 2):
        fail(f"second generation: {ra} / {rb}")
    if ra.leader != a_.id or sorted(m.member_id for m in ra.members) != sorted([a_.id, b_.id]) or rb.members:
        fail(f"leader and member lists: {ra} / {rb}")
    expect_state("CompletingRebalance")
    expect("OffsetCommit of the new generation in CompletingRebalance", b_.commit(6), REBALANCE_IN_PROGRESS)
    expect("OffsetCommit of the old generation", a_.commit(6, generation=1), ILLEGAL_GENERATION)
    expect("Heartbeat of the follower in CompletingRebalance", b_.heartbeat(), NONE)

    # The follower's SyncGroup waits for the leader's.
    b_.send_sync()
    if b_.conn.ready():
        fail("the follower's SyncGroup was answered before the leader's")
    a_.send_sync([(a_.id, b"a2"), (b_.id, b"b2")])
    sa, sb = a_.conn.recv(), b_.conn.recv()
    if (sa.error_code, sa.assignment, sb.error_code, sb.assignment) != (NONE, b"a2", NONE, b"b2"):
        fail(f"assignments: {sa} / {sb}")
    expect_state("Stable")

    # A follower rejoining with the same metadata gets the current generation at once.
    b_.send_join()
    rb = b_.join_answer()
    if (rb.error_code, rb.generation_id, rb.leader) != (NONE, 2, a_.id):
        fail(f"follower rejoin in Stable: {rb}")
    expect_state("Stable")
    expect("OffsetCommit in Stable", b_.commit(7), NONE)

    # Both leave: the group is Empty and takes simple commits again.
    expect("LeaveGroup of the leader", a_.leave(), NONE)
    expect_state("PreparingRebalance")
    expect("LeaveGroup of the last member", b_.leave(), NONE)
    expect_state("Empty")
    expect("Heartbeat to an Empty group", b_.heartbeat(), UNKNOWN_MEMBER_ID)
    expect("OffsetCommit of a former member", b_.commit(8), UNKNOWN_MEMBER_ID)
    committed = admin.list_group_offsets({a.group: [TopicPartition(a.topic, 0)]})[a.group]
    if committed[TopicPartition(a.topic, 0)].offset != 7:
        fail(f"committed offset {committed}, expected 7 (the last accepted commit)")
    expect("simple commit to an Empty group", b_.commit(9, generation=-1, member_id=""), NONE)
    admin.close()
    print("kp_group_protocol: ok: Dead, Empty, PreparingRebalance, CompletingRebalance and Stable answered as "
          "Kafka does; a commit of the current generation accepted while PreparingRebalance")


if __name__ == "__main__":
    main()
