//! The administrator's rules in the engine: precedence over every party's policy, scopes,
//! exceptions, survival across re-registration, ingress, the flow cache, events.

mod common;

use common::*;
use shoji_netfilter::events::{EventKind, PolicyChange};
use shoji_netfilter::rules::Action;
use shoji_netfilter::{AdminScope, AdminSpec, ContainerSpec, Engine, EngineConfig};
use shoji_shared::{
    ContainerId, Direction, DropReason, ExecContext, FrameFilter, FrameMeta, TaskIdentity, Verdict,
};

const DENIED: Verdict = Verdict::Drop(DropReason::AdminDenied);

fn rule(form: &str) -> AdminSpec {
    AdminSpec::parse_form(form.as_bytes()).unwrap()
}

fn host_task(uid: u32) -> TaskIdentity {
    let mut t = task(None, None, ExecContext::Task);
    t.uid = Some(uid);
    t
}

fn tx_by(t: &TaskIdentity) -> FrameMeta<'_> {
    FrameMeta {
        direction: Direction::Tx,
        descriptor_vlan: None,
        task: Some(t),
    }
}

fn host_syn(port: u16) -> Vec<u8> {
    host_syn_from(40000, port)
}

fn host_syn_from(src_port: u16, port: u16) -> Vec<u8> {
    tcp_frame(
        None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, src_port, port, SYN,
    )
}

fn b_syn(port: u16) -> Vec<u8> {
    tcp_frame(
        Some(VLAN_B),
        MAC_B,
        MAC_GW,
        IP_B,
        IP_REMOTE,
        40000,
        port,
        SYN,
    )
}

fn a_syn(port: u16) -> Vec<u8> {
    tcp_frame(
        Some(VLAN_A),
        MAC_A,
        MAC_GW,
        IP_A,
        IP_REMOTE,
        40000,
        port,
        SYN,
    )
}

fn hits(e: &Engine<'_>, id: u32) -> u64 {
    e.admin_rules()
        .entries()
        .iter()
        .find(|r| r.id == id)
        .unwrap()
        .hits
}

#[test]
fn a_uid_rule_stops_that_user_only() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let id = e
        .add_admin_rule(rule("uid=1000&protocol=tcp&dst_port=7777"))
        .unwrap();
    let (user, root) = (host_task(1000), host_task(0));
    assert_eq!(e.filter(&tx_by(&user), &host_syn(7777), &mut out), DENIED);
    assert_eq!(
        e.filter(&tx_by(&root), &host_syn_from(40001, 7777), &mut out),
        Verdict::Pass
    );
    assert_eq!(
        e.filter(&tx_by(&user), &host_syn_from(40002, 7778), &mut out),
        Verdict::Pass
    );
    // The same connection's SYN retransmitted from a timer (no trusted sender): still denied,
    // the flow is remembered; and so from an interrupt.
    assert_eq!(e.filter(&tx(), &host_syn(7777), &mut out), DENIED);
    let mut irq = user;
    irq.context = ExecContext::SoftIrq;
    assert_eq!(e.filter(&tx_by(&irq), &host_syn(7777), &mut out), DENIED);
    assert_eq!(e.admin_rules().denied_flows(e.now()), 1);
    // Another flow without a trusted sender: a rule on a user cannot match it.
    assert_eq!(
        e.filter(&tx(), &host_syn_from(40003, 7777), &mut out),
        Verdict::Pass
    );
    assert_eq!(out.wire.len(), 3);
    assert_eq!(hits(&e, id), 3);
    let host = &e.counters().host;
    assert_eq!(host.drops[DropReason::AdminDenied.index()], 3);
    assert_eq!(e.counters().total.drops[DropReason::AdminDenied.index()], 3);
    // Removed: the user gets through again, on the remembered flow too.
    assert!(e.remove_admin_rule(id).is_some());
    assert_eq!(e.admin_rules().denied_flows(e.now()), 0);
    assert_eq!(
        e.filter(&tx_by(&user), &host_syn(7777), &mut out),
        Verdict::Pass
    );
    assert_eq!(e.filter(&tx(), &host_syn(7777), &mut out), Verdict::Pass);
}

#[test]
fn a_flow_taken_over_by_an_allowed_sender_is_forgotten() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    e.add_admin_rule(rule("uid=1000&protocol=tcp&dst_port=7777"))
        .unwrap();
    let (user, root) = (host_task(1000), host_task(0));
    assert_eq!(e.filter(&tx_by(&user), &host_syn(7777), &mut out), DENIED);
    assert_eq!(e.admin_rules().denied_flows(e.now()), 1);
    // Root connects from the same port later: its SYN passes, and the ACKs the kernel sends for
    // it from softirq are root's, not uid 1000's old attempt.
    assert_eq!(
        e.filter(&tx_by(&root), &host_syn(7777), &mut out),
        Verdict::Pass
    );
    assert_eq!(e.admin_rules().denied_flows(e.now()), 0);
    let ack = tcp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 40000, 7777, ACK);
    assert_eq!(e.filter(&tx(), &ack, &mut out), Verdict::Pass);
    // A frame of another party or protocol does not forget it.
    assert_eq!(e.filter(&tx_by(&user), &host_syn(7777), &mut out), DENIED);
    let udp = udp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 40000, 7777);
    assert_eq!(e.filter(&tx_by(&root), &udp, &mut out), Verdict::Pass);
    assert_eq!(e.admin_rules().denied_flows(e.now()), 1);
}

#[test]
fn a_remembered_flow_expires_and_the_table_keeps_the_newest() {
    use shoji_netfilter::admin::{DENIED_FLOWS, DENIED_FLOW_TTL_NS, PROBE};
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    e.add_admin_rule(rule("uid=1000&protocol=tcp")).unwrap();
    let user = host_task(1000);
    e.set_now(1_000);
    assert_eq!(e.filter(&tx_by(&user), &host_syn(80), &mut out), DENIED);
    // Each retransmission refreshes it.
    e.set_now(1_000 + DENIED_FLOW_TTL_NS - 1);
    assert_eq!(e.filter(&tx(), &host_syn(80), &mut out), DENIED);
    e.set_now(1_000 + 2 * DENIED_FLOW_TTL_NS - 2);
    assert_eq!(e.filter(&tx(), &host_syn(80), &mut out), DENIED);
    // Idle for the whole time to live: forgotten.
    e.set_now(1_000 + 3 * DENIED_FLOW_TTL_NS);
    assert_eq!(e.filter(&tx(), &host_syn(80), &mut out), Verdict::Pass);
    assert_eq!(e.admin_rules().denied_flows(e.now()), 0);
    // A full table: every new flow is remembered, some older one gives way, and the table
    // never holds more than its size.
    let t0 = e.now();
    let flows = 3 * DENIED_FLOWS as u16;
    for i in 0..flows {
        e.set_now(t0 + u64::from(i));
        assert_eq!(
            e.filter(&tx_by(&user), &host_syn_from(10_000 + i, 80), &mut out),
            DENIED
        );
        assert_eq!(
            e.filter(&tx(), &host_syn_from(10_000 + i, 80), &mut out),
            DENIED,
            "the newest flow is remembered"
        );
        assert!(e.admin_rules().denied_flows(e.now()) <= DENIED_FLOWS);
    }
    let remembered = (0..flows)
        .filter(|i| e.filter(&tx(), &host_syn_from(10_000 + i, 80), &mut out) == DENIED)
        .count();
    assert!(
        remembered > DENIED_FLOWS / 2 && remembered <= DENIED_FLOWS,
        "{remembered} remembered"
    );
    // The oldest go first: the last PROBE flows are all still there.
    for i in flows - PROBE as u16..flows {
        assert_eq!(
            e.filter(&tx(), &host_syn_from(10_000 + i, 80), &mut out),
            DENIED
        );
    }
    // UDP flows are remembered too; ICMP is not a flow here.
    let f = udp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 5000, 53);
    e.add_admin_rule(rule("uid=1000&protocol=udp")).unwrap();
    assert_eq!(e.filter(&tx_by(&user), &f, &mut out), DENIED);
    assert_eq!(e.filter(&tx(), &f, &mut out), DENIED);
}

#[test]
fn administrator_deny_overrides_a_containers_allow_and_survives_re_registration() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let id = e.add_admin_rule(rule("container=2")).unwrap();
    assert_eq!(e.filter(&tx(), &b_syn(80), &mut out), DENIED);
    assert_eq!(e.filter(&tx(), &a_syn(80), &mut out), Verdict::Pass);
    assert_eq!(e.filter(&tx(), &host_syn(80), &mut out), Verdict::Pass);
    // The agent unregisters B and registers it again, then under another id with B's
    // addresses on another VLAN, then with an explicit allow-all rule: still cut off.
    e.unregister(ContainerId(2)).unwrap();
    e.register(spec_b()).unwrap();
    assert_eq!(e.filter(&tx(), &b_syn(80), &mut out), DENIED);
    e.unregister(ContainerId(2)).unwrap();
    let mut renamed = ContainerSpec::new(9, 109, MAC_EVIL, IP_B);
    renamed.cgroup_id = Some(CGROUP_B);
    e.register(renamed).unwrap();
    let f = tcp_frame(Some(109), MAC_EVIL, MAC_GW, IP_B, IP_REMOTE, 40000, 80, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), DENIED);
    e.unregister(ContainerId(9)).unwrap();
    let renamed = ContainerSpec::new(10, 110, MAC_B, [10, 0, 0, 99].into());
    e.register(renamed).unwrap();
    let f = tcp_frame(
        Some(110),
        MAC_B,
        MAC_GW,
        [10, 0, 0, 99].into(),
        IP_REMOTE,
        1,
        80,
        SYN,
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), DENIED, "pinned MAC");
    // A new container with none of B's addresses is not B.
    let fresh = ContainerSpec::new(11, 111, [2, 0, 0, 0, 0, 0x11], [10, 0, 0, 11].into());
    e.register(fresh).unwrap();
    let f = tcp_frame(
        Some(111),
        [2, 0, 0, 0, 0, 0x11],
        MAC_GW,
        [10, 0, 0, 11].into(),
        IP_REMOTE,
        1,
        80,
        SYN,
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert_eq!(hits(&e, id), 4);
    e.remove_admin_rule(id).unwrap();
    let f = tcp_frame(
        Some(110),
        MAC_B,
        MAC_GW,
        [10, 0, 0, 99].into(),
        IP_REMOTE,
        1,
        80,
        SYN,
    );
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
}

#[test]
fn a_rule_for_an_unregistered_container_applies_when_it_registers() {
    let mut s = slots(8);
    let mut e = Box::new(Engine::new(&mut s, EngineConfig::default()));
    e.register(spec_a()).unwrap();
    e.add_admin_rule(rule("container=2&protocol=tcp")).unwrap();
    let mut out = Sink::default();
    assert_eq!(e.filter(&tx(), &a_syn(80), &mut out), Verdict::Pass);
    e.register(spec_b()).unwrap();
    assert_eq!(e.filter(&tx(), &b_syn(80), &mut out), DENIED);
    // Its pins are empty: it follows the id only.
    assert!(e.admin_rules().entries()[0].pinned_ipv4.is_empty());
}

#[test]
fn an_allow_rule_is_an_exception_to_denials_not_a_widening() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let deny = e
        .add_admin_rule(rule("container=2&direction=egress"))
        .unwrap();
    let allow = e
        .add_admin_rule(rule("action=allow&container=2&protocol=tcp&dst_port=443"))
        .unwrap();
    assert_eq!(e.filter(&tx(), &b_syn(80), &mut out), DENIED);
    assert_eq!(e.filter(&tx(), &b_syn(443), &mut out), Verdict::Pass);
    assert_eq!((hits(&e, deny), hits(&e, allow)), (1, 1));
    // The order rules were added in does not matter: the exception added first works too.
    e.remove_admin_rule(deny).unwrap();
    e.add_admin_rule(rule("container=2&direction=egress"))
        .unwrap();
    assert_eq!(e.filter(&tx(), &b_syn(443), &mut out), Verdict::Pass);
    assert_eq!(e.filter(&tx(), &b_syn(80), &mut out), DENIED);
    // B's own policy still applies: its default deny is not lifted by the exception.
    e.update(defaults(spec_b(), Action::Deny, Action::Allow))
        .unwrap();
    assert_eq!(
        e.filter(&tx(), &b_syn(443), &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    // An allow rule alone changes nothing.
    let mut s2 = slots(8);
    let mut e2 = engine_ab(&mut s2);
    e2.add_admin_rule(rule("action=allow&container=all"))
        .unwrap();
    e2.update(defaults(spec_b(), Action::Deny, Action::Allow))
        .unwrap();
    assert_eq!(
        e2.filter(&tx(), &b_syn(80), &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
}

#[test]
fn scopes_host_container_everyone() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let host = e
        .add_admin_rule(rule("container=host&protocol=tcp"))
        .unwrap();
    assert_eq!(e.filter(&tx(), &host_syn(22), &mut out), DENIED);
    assert_eq!(e.filter(&tx(), &a_syn(22), &mut out), Verdict::Pass);
    e.remove_admin_rule(host).unwrap();
    let all = e
        .add_admin_rule(rule("container=all&remote=192.0.2.0/24"))
        .unwrap();
    assert_eq!(e.filter(&tx(), &host_syn(22), &mut out), DENIED);
    assert_eq!(e.filter(&tx(), &a_syn(22), &mut out), DENIED);
    assert_eq!(e.filter(&tx(), &b_syn(22), &mut out), DENIED);
    assert_eq!(hits(&e, all), 3);
    let f = tcp_frame(Some(VLAN_A), MAC_A, MAC_GW, IP_A, IP_GW, 1, 22, SYN);
    assert_eq!(e.filter(&tx(), &f, &mut out), Verdict::Pass);
    assert_eq!(e.counters().host.drops[DropReason::AdminDenied.index()], 2);
    for id in [1, 2] {
        let c = e.container_counters(ContainerId(id)).unwrap();
        assert_eq!(c.drops[DropReason::AdminDenied.index()], 1);
    }
}

#[test]
fn ingress_rules_stop_deliveries_to_their_party_only() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    e.add_admin_rule(rule("container=2&direction=ingress&protocol=udp"))
        .unwrap();
    let to_b = udp_frame(None, MAC_GW, MAC_B, IP_REMOTE, IP_B, 53, 5000);
    let to_a = udp_frame(None, MAC_GW, MAC_A, IP_REMOTE, IP_A, 53, 5000);
    assert_eq!(e.filter(&rx(), &to_b, &mut out), DENIED);
    assert_eq!(e.filter(&rx(), &to_a, &mut out), Verdict::Pass);
    // B still sends.
    let from_b = udp_frame(Some(VLAN_B), MAC_B, MAC_GW, IP_B, IP_REMOTE, 5000, 53);
    assert_eq!(e.filter(&tx(), &from_b, &mut out), Verdict::Pass);
    // A relay from A to B is an ingress for B.
    let relay = udp_frame(Some(VLAN_A), MAC_A, MAC_B, IP_A, IP_B, 5000, 53);
    assert_eq!(e.filter(&tx(), &relay, &mut out), DENIED);
    let c = e.container_counters(ContainerId(2)).unwrap();
    assert_eq!(c.drops[DropReason::AdminDenied.index()], 2);
}

#[test]
fn a_new_rule_overrides_a_cached_pass() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    let user = host_task(1000);
    for _ in 0..3 {
        assert_eq!(
            e.filter(&tx_by(&user), &host_syn(7777), &mut out),
            Verdict::Pass
        );
    }
    let f = tcp_frame(None, MAC_HOST, MAC_GW, IP_HOST, IP_REMOTE, 40000, 7777, ACK);
    for _ in 0..3 {
        assert_eq!(e.filter(&tx_by(&user), &f, &mut out), Verdict::Pass);
    }
    assert!(e.flow_cache_stats().hits > 0, "the flow is cached");
    e.add_admin_rule(rule("uid=1000&protocol=tcp&dst_port=7777"))
        .unwrap();
    assert_eq!(e.filter(&tx_by(&user), &f, &mut out), DENIED);
    assert_eq!(e.filter(&tx_by(&user), &host_syn(7777), &mut out), DENIED);
}

#[test]
fn changes_are_events() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let a = e.add_admin_rule(rule("container=2")).unwrap();
    let b = e.add_admin_rule(rule("uid=5")).unwrap();
    e.remove_admin_rule(a).unwrap();
    assert!(e.remove_admin_rule(a).is_none());
    e.remove_admin_rule(b).unwrap();
    let changes: Vec<_> = event_kinds(&e)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Policy { container, change }
                if matches!(
                    change,
                    PolicyChange::AdminRuleAdded | PolicyChange::AdminRuleRemoved
                ) =>
            {
                Some((container, change))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [
            (Some(ContainerId(2)), PolicyChange::AdminRuleAdded),
            (None, PolicyChange::AdminRuleAdded),
            (Some(ContainerId(2)), PolicyChange::AdminRuleRemoved),
            (None, PolicyChange::AdminRuleRemoved),
        ]
    );
    assert!(e.admin_rules().is_empty());
    assert_eq!(e.admin_rules().entries().len(), 0);
    let _ = AdminScope::Everyone;
}

#[test]
fn an_exception_for_one_container_is_not_one_for_another() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    e.add_admin_rule(rule("container=all&protocol=tcp"))
        .unwrap();
    e.add_admin_rule(rule("action=allow&container=1&protocol=tcp"))
        .unwrap();
    assert_eq!(e.filter(&tx(), &a_syn(80), &mut out), Verdict::Pass);
    assert_eq!(e.filter(&tx(), &b_syn(80), &mut out), DENIED);
    assert_eq!(e.filter(&tx(), &host_syn(80), &mut out), DENIED);
}

#[test]
fn only_tcp_and_udp_flows_are_remembered_for_exactly_their_time_to_live() {
    use shoji_netfilter::admin::DENIED_FLOW_TTL_NS;
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    e.add_admin_rule(rule("uid=1000&protocol=icmp")).unwrap();
    let user = host_task(1000);
    let ip = Ip4::new(IP_HOST, IP_REMOTE, 1).build(&icmp_echo());
    let ping = eth(MAC_GW, MAC_HOST, None, 0x0800, &ip);
    assert_eq!(e.filter(&tx_by(&user), &ping, &mut out), DENIED);
    assert_eq!(
        e.admin_rules().denied_flows(e.now()),
        0,
        "ICMP is no flow here"
    );
    assert_eq!(e.filter(&tx(), &ping, &mut out), Verdict::Pass);
    // A TCP flow: remembered up to, not including, the time to live after its last frame.
    e.add_admin_rule(rule("uid=1000&protocol=tcp")).unwrap();
    e.set_now(10);
    assert_eq!(e.filter(&tx_by(&user), &host_syn(80), &mut out), DENIED);
    e.set_now(10 + DENIED_FLOW_TTL_NS - 1);
    assert_eq!(e.admin_rules().denied_flows(e.now()), 1);
    e.set_now(10 + DENIED_FLOW_TTL_NS);
    assert_eq!(e.admin_rules().denied_flows(e.now()), 0);
    assert_eq!(e.filter(&tx(), &host_syn(80), &mut out), Verdict::Pass);
}

#[test]
fn refusals_read_as_text() {
    use shoji_netfilter::rules::RuleError;
    use shoji_netfilter::AdminError;
    assert_eq!(
        AdminError::Full.to_string(),
        "the table holds 64 rules already"
    );
    assert_eq!(AdminError::NoIds.to_string(), "rule numbers exhausted");
    assert_eq!(
        AdminError::Rule(RuleError::BadPortRange).to_string(),
        RuleError::BadPortRange.describe()
    );
    let e = AdminSpec::parse_form(b"colour=red").unwrap_err();
    assert_eq!(e.to_string(), "colour: unknown key");
    let e = AdminSpec::parse_form(b"").unwrap_err();
    assert!(e.to_string().starts_with("empty rule"), "{e}");
}

#[test]
fn a_rule_without_a_sender_needs_no_memory() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    e.add_admin_rule(rule("protocol=tcp&dst_port=80")).unwrap();
    e.add_admin_rule(rule("uid=1000&protocol=udp")).unwrap();
    assert_eq!(
        e.filter(&tx_by(&host_task(0)), &host_syn(80), &mut out),
        DENIED
    );
    assert_eq!(e.admin_rules().denied_flows(e.now()), 0);
}

#[test]
fn explicit_defaults_and_the_longest_body() {
    use shoji_netfilter::admin::MAX_FORM;
    use shoji_netfilter::rules::{Action, DirectionMatch};
    let s = AdminSpec::parse_form(b"action=deny&direction=both&container=all").unwrap();
    assert_eq!(s.rule.action, Action::Deny);
    assert_eq!(s.rule.direction, DirectionMatch::Both);
    assert_eq!(s.scope, AdminScope::Everyone);
    let mut body = b"uid=1".to_vec();
    body.resize(MAX_FORM, b'\n');
    assert!(AdminSpec::parse_form(&body).is_ok());
    body.push(b'\n');
    assert_eq!(
        AdminSpec::parse_form(&body).unwrap_err().message,
        "body too long"
    );
}

#[test]
fn a_containers_deny_rule_is_not_anothers() {
    let mut s = slots(8);
    let mut e = engine_ab(&mut s);
    let mut out = Sink::default();
    e.add_admin_rule(rule("container=1&protocol=udp")).unwrap();
    e.add_admin_rule(rule("container=2&protocol=tcp")).unwrap();
    assert_eq!(e.filter(&tx(), &a_syn(80), &mut out), Verdict::Pass);
    assert_eq!(e.filter(&tx(), &b_syn(80), &mut out), DENIED);
}
