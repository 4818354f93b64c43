-- Wireshark dissector for the Context Transfer Protocol (CXTP, RFC 4067) as this testbed speaks it,
-- with the testbed's IPsec context (Feature Profile Type 0x8001) decoded field by field.
--
--   * MN <-> AR: ICMPv6 type 150 / ICMPv4 type 41 "Experimental Mobility", subtype 1 (RFC 4065 §8,
--     RFC 4067 §3.2): Type | Code 0 | Checksum | Subtype | 3 Reserved | CXTP message.
--   * AR <-> AR: SCTP port 5091 (one message per user message) and TCP port 5091 (messages cut from
--     the stream by their own Length field, as nodes/cxtp_transport.py TcpTransport frames them).
--
-- The layouts are the ones of cxtp/messages.py, cxtp/icmp.py and ipsec/context.py; docs/protocol.md
-- and docs/ipsec-context.md describe them, docs/wireshark.md lists every display filter field.
--
-- Load it with `tshark -X lua_script:wireshark/cxtp.lua ...` (or let the profile written by
-- scenarios/analysis/wireshark.py load it). Written for Wireshark 4.0 (Lua 5.2, bit32); loading it twice is
-- harmless.

if CXTP_DISSECTOR_LOADED then
    return
end
CXTP_DISSECTOR_LOADED = true

local band, rshift = bit32.band, bit32.rshift

-- --- constants ------------------------------------------------------------------------------------

local CXTP_PORT = 5091
local ICMPV6_TYPE_EXPERIMENTAL_MOBILITY = 150
local ICMPV4_TYPE_EXPERIMENTAL_MOBILITY = 41
local ICMP_SUBTYPE_CXTP = 1
local CXTP_HOP_LIMIT = 255
local IPSEC_CONTEXT_FPT = 0x8001
local FPT_MLD = 0x0001

local message_types = {
    [1] = "CTAR", [2] = "CTAA", [3] = "CTD", [4] = "PCTD", [5] = "CTDR", [6] = "CTC", [7] = "CT-Req",
}
local message_names = {
    [1] = "Context Transfer Activate Request",
    [2] = "Context Transfer Activate Acknowledge",
    [3] = "Context Transfer Data",
    [4] = "Predictive Context Transfer Data",
    [5] = "Context Transfer Data Reply",
    [6] = "Context Transfer Cancel",
    [7] = "Context Transfer Request",
}
local fpt_names = {
    [0x0000] = "Reserved",
    [FPT_MLD] = "IPv6 Multicast Listener context (RFC 4067 App. B)",
    [IPSEC_CONTEXT_FPT] = "IPsec context (testbed value)",
    -- the options of our departures from RFC 4067 (cxtp/options.py, docs/protocol.md)
    [0xFF01] = "Option: BINDING (CTAR bound to its source and AR)",
    [0xFF02] = "Option: TRANSFER (id, origin, lifetime)",
    [0xFF03] = "Option: BOUND (the CTAR's source, its AR)",
    [0xFF04] = "Option: CTAA_KEY",
    [0xFF05] = "Option: CTAA_AUTH (the CTAA's authenticator)",
}
local function is_option(fpt)
    return fpt >= 0xFF01 and fpt <= 0xFF05
end
local status_names = {
    [0x00] = "Success",
    [0x01] = "BAD_CHECKSUM",
    [0x80] = "Unsupported FPT",
    [0x81] = "Context unavailable",
    [0x82] = "Authorization failed",
    [0x83] = "Transfer timeout",
    [0x84] = "Context too large",
    [0x85] = "Handler error",
    [0x86] = "Unsupported algorithm",
}
-- Context-type codes (0x01-0x7F belong to each context type, RFC 4067 §2.3).
local context_status_names = {
    [IPSEC_CONTEXT_FPT] = { [0x10] = "IPsec: no context", [0x11] = "IPsec: bad context",
                            [0x12] = "IPsec: install failed" },
    [FPT_MLD] = { [0x01] = "MLD: bad data" },
}
local algorithm_names = { [1] = "HMAC_SHA1" }
local icmp_subtypes = { [0] = "CARD", [1] = "CXTP" }
local families = { [0] = "AF_UNSPEC", [2] = "AF_INET", [10] = "AF_INET6" }
local ipsec_protocols = { [50] = "ESP", [51] = "AH", [108] = "IPComp" }
local ip_protocols = {
    [0] = "any", [1] = "ICMP", [6] = "TCP", [17] = "UDP", [50] = "ESP", [51] = "AH", [58] = "ICMPv6",
    [132] = "SCTP", [135] = "Mobility Header",
}
local xfrm_modes = { [0] = "transport", [1] = "tunnel", [2] = "route optimization", [3] = "in trigger",
                     [4] = "BEET" }
local policy_dirs = { [0] = "in", [1] = "out", [2] = "fwd" }
local policy_actions = { [0] = "allow", [1] = "block" }
local algorithm_kinds = { [0] = "crypt", [1] = "auth", [2] = "auth_trunc", [3] = "aead", [4] = "comp" }
local checksum_status = { [0] = "Bad", [1] = "Good", [2] = "Unverified" }

-- --- protocol and fields ----------------------------------------------------------------------------

local cxtp = Proto("cxtp", "Context Transfer Protocol (RFC 4067)")
local F = {}
local function field(key, make, ...)
    F[key] = make(...)
end
local u8, u16, u32, u64 = ProtoField.uint8, ProtoField.uint16, ProtoField.uint32, ProtoField.uint64

-- ICMP Experimental Mobility wrapper
field("icmp_type", u8, "cxtp.icmp.type", "ICMP Type", base.DEC)
field("icmp_code", u8, "cxtp.icmp.code", "ICMP Code", base.DEC)
field("icmp_checksum", u16, "cxtp.icmp.checksum", "ICMP Checksum", base.HEX)
field("icmp_checksum_status", u8, "cxtp.icmp.checksum.status", "ICMP Checksum Status", base.DEC, checksum_status)
field("icmp_subtype", u8, "cxtp.icmp.subtype", "Experimental Mobility Subtype", base.DEC, icmp_subtypes)
field("icmp_reserved", u32, "cxtp.icmp.reserved", "Reserved", base.HEX)
field("icmp_data", ProtoField.bytes, "cxtp.icmp.data", "Experimental Mobility data (not CXTP)")

-- common header (§2.2)
field("version", u8, "cxtp.version", "Version", base.DEC, nil, 0xE0)
field("type", u8, "cxtp.type", "Type", base.DEC, message_types, 0x1F)
field("flags", u8, "cxtp.flags", "Flags", base.HEX)
field("flag_v", ProtoField.bool, "cxtp.flags.v", "V (IPv4 addresses)", 8, { "IPv4", "IPv6" }, 0x80)
field("flag_a", ProtoField.bool, "cxtp.flags.a", "A (acknowledgement requested)", 8, nil, 0x40)
field("flag_s", ProtoField.bool, "cxtp.flags.s", "S (all contexts transferred)", 8, nil, 0x40)
field("flag_reserved", u8, "cxtp.flags.reserved", "Reserved", base.HEX, nil, 0x3F)
field("flag_reserved7", u8, "cxtp.flags.reserved", "Reserved", base.HEX, nil, 0x7F)
field("length", u16, "cxtp.length", "Length", base.DEC)
field("mn_prev", ProtoField.ipv6, "cxtp.mn_prev", "MN previous address")
field("mn_prev_v4", ProtoField.ipv4, "cxtp.mn_prev_v4", "MN previous address (IPv4)")
field("ar_addr", ProtoField.ipv6, "cxtp.ar_addr", "AR address")
field("ar_addr_v4", ProtoField.ipv4, "cxtp.ar_addr_v4", "AR address (IPv4)")
field("seq", u32, "cxtp.seq", "Sequence Number", base.HEX_DEC)
field("token", ProtoField.bytes, "cxtp.token", "Authorization Token")
field("elapsed", u32, "cxtp.elapsed", "Elapsed Time (ms)", base.DEC)
field("algorithm", u16, "cxtp.algorithm", "Algorithm", base.DEC, algorithm_names)
field("key_length", u16, "cxtp.key_length", "Key Length", base.DEC)
field("key", ProtoField.bytes, "cxtp.key", "Key")
field("trailing", ProtoField.bytes, "cxtp.trailing", "Unexpected octets")

-- status tuples (§2.5.2, §2.5.4) with our extension (Reserved = words of data after the tuple)
field("status_fpt", u16, "cxtp.status.fpt", "Feature Profile Type", base.HEX, fpt_names)
field("status_code", u8, "cxtp.status.code", "Status", base.HEX, status_names)
field("status_words", u8, "cxtp.status.data_words", "Data length (4-octet words)", base.DEC)
field("status_data", ProtoField.bytes, "cxtp.status.data", "Context-specific data")

-- Context Data Blocks (§2.4)
field("cdb_fpt", u16, "cxtp.cdb.fpt", "Feature Profile Type", base.HEX, fpt_names)
field("cdb_length", u8, "cxtp.cdb.length", "Length (8-octet words)", base.DEC)
field("cdb_p", ProtoField.bool, "cxtp.cdb.p", "P (presence vector)", 8, nil, 0x80)
field("cdb_reserved", u8, "cxtp.cdb.reserved", "Reserved", base.HEX, nil, 0x7F)
field("cdb_pv", u32, "cxtp.cdb.presence_vector", "Presence Vector", base.HEX)
field("cdb_data", ProtoField.bytes, "cxtp.cdb.data", "Data")
field("cdb_padding", ProtoField.bytes, "cxtp.cdb.padding", "Padding")
field("cdb_request", ProtoField.bool, "cxtp.cdb.request", "Request block (no context data)")

-- App. B MLD context (FPT 0x0001)
field("mld_prefix", ProtoField.bytes, "cxtp.mld.prefix", "Subnet prefix (64 bits)")
field("mld_group", ProtoField.ipv6, "cxtp.mld.group", "Multicast address")

-- IPsec context (FPT 0x8001, docs/ipsec-context.md)
field("ipsec_version", u8, "cxtp.ipsec.version", "Version", base.DEC)
field("ipsec_flags", u8, "cxtp.ipsec.flags", "Flags", base.HEX)
field("ipsec_sa_count", u8, "cxtp.ipsec.sa_count", "Number of SAs", base.DEC)
field("ipsec_policy_count", u8, "cxtp.ipsec.policy_count", "Number of policies", base.DEC)
field("ipsec_captured_at", u64, "cxtp.ipsec.captured_at", "Captured at (sender's clock, s)", base.DEC)
field("ipsec_reserved", u32, "cxtp.ipsec.reserved", "Reserved", base.HEX)
field("ipsec_padding", ProtoField.bytes, "cxtp.ipsec.padding", "Padding")

field("sa_length", u16, "cxtp.ipsec.sa.length", "Record length", base.DEC)
field("sa_family", u16, "cxtp.ipsec.sa.family", "Family", base.DEC, families)
field("sa_proto", u8, "cxtp.ipsec.sa.proto", "Protocol", base.DEC, ipsec_protocols)
field("sa_mode", u8, "cxtp.ipsec.sa.mode", "Mode", base.DEC, xfrm_modes)
field("sa_flags", u8, "cxtp.ipsec.sa.flags", "Flags (XFRM_STATE_*)", base.HEX)
field("sa_flag_esn", ProtoField.bool, "cxtp.ipsec.sa.flags.esn", "ESN", 8, nil, 0x80)
field("sa_alg_count", u8, "cxtp.ipsec.sa.alg_count", "Number of algorithms", base.DEC)
field("sa_spi", u32, "cxtp.ipsec.sa.spi", "SPI", base.HEX_DEC)
field("sa_reqid", u32, "cxtp.ipsec.sa.reqid", "Reqid", base.DEC)
field("sa_extra_flags", u32, "cxtp.ipsec.sa.extra_flags", "Extra flags", base.HEX)
field("sa_if_id", u32, "cxtp.ipsec.sa.if_id", "Interface id", base.DEC)
field("sa_mark_value", u32, "cxtp.ipsec.sa.mark_value", "Mark value", base.HEX)
field("sa_mark_mask", u32, "cxtp.ipsec.sa.mark_mask", "Mark mask", base.HEX)
field("sa_daddr", ProtoField.ipv6, "cxtp.ipsec.sa.daddr", "Destination")
field("sa_daddr_v4", ProtoField.ipv4, "cxtp.ipsec.sa.daddr_v4", "Destination (IPv4)")
field("sa_saddr", ProtoField.ipv6, "cxtp.ipsec.sa.saddr", "Source")
field("sa_saddr_v4", ProtoField.ipv4, "cxtp.ipsec.sa.saddr_v4", "Source (IPv4)")

field("cur_bytes", u64, "cxtp.ipsec.sa.cur.bytes", "Bytes used", base.DEC)
field("cur_packets", u64, "cxtp.ipsec.sa.cur.packets", "Packets used", base.DEC)
field("cur_add_time", u64, "cxtp.ipsec.sa.cur.add_time", "Added at (sender's clock, s)", base.DEC)
field("cur_use_time", u64, "cxtp.ipsec.sa.cur.use_time", "First used at (sender's clock, s)", base.DEC)

field("replay_oseq", u64, "cxtp.ipsec.sa.replay.oseq", "Output sequence number", base.DEC)
field("replay_seq", u64, "cxtp.ipsec.sa.replay.seq", "Highest sequence number received", base.DEC)
field("replay_window", u32, "cxtp.ipsec.sa.replay.window", "Replay window", base.DEC)
field("replay_flags", u8, "cxtp.ipsec.sa.replay.flags", "Record flags", base.HEX)
field("replay_flag_esn", ProtoField.bool, "cxtp.ipsec.sa.replay.esn_attr", "Kept as xfrm_replay_state_esn", 8, nil, 0x01)
field("replay_flag_mark", ProtoField.bool, "cxtp.ipsec.sa.replay.has_mark", "Mark present", 8, nil, 0x02)
field("replay_reserved", u8, "cxtp.ipsec.sa.replay.reserved", "Reserved", base.HEX)
field("replay_words", u16, "cxtp.ipsec.sa.replay.bitmap_words", "Bitmap words", base.DEC)
field("replay_bitmap", u32, "cxtp.ipsec.sa.replay.bitmap", "Bitmap word", base.HEX)

field("alg_kind", u8, "cxtp.ipsec.alg.kind", "Kind", base.DEC, algorithm_kinds)
field("alg_name_length", u8, "cxtp.ipsec.alg.name_length", "Name length", base.DEC)
field("alg_key_length", u16, "cxtp.ipsec.alg.key_length", "Key length (octets)", base.DEC)
field("alg_bits", u32, "cxtp.ipsec.alg.bits", "ICV/truncation length (bits)", base.DEC)
field("alg_name", ProtoField.string, "cxtp.ipsec.alg.name", "Name")
field("alg_key", ProtoField.bytes, "cxtp.ipsec.alg.key", "Key")
field("alg_padding", ProtoField.bytes, "cxtp.ipsec.alg.padding", "Padding")

field("lft_soft_bytes", u64, "cxtp.ipsec.lifetime.soft_byte_limit", "Soft byte limit", base.DEC)
field("lft_hard_bytes", u64, "cxtp.ipsec.lifetime.hard_byte_limit", "Hard byte limit", base.DEC)
field("lft_soft_packets", u64, "cxtp.ipsec.lifetime.soft_packet_limit", "Soft packet limit", base.DEC)
field("lft_hard_packets", u64, "cxtp.ipsec.lifetime.hard_packet_limit", "Hard packet limit", base.DEC)
field("lft_soft_add", u64, "cxtp.ipsec.lifetime.soft_add_expires_seconds", "Soft add-expire (s)", base.DEC)
field("lft_hard_add", u64, "cxtp.ipsec.lifetime.hard_add_expires_seconds", "Hard add-expire (s)", base.DEC)
field("lft_soft_use", u64, "cxtp.ipsec.lifetime.soft_use_expires_seconds", "Soft use-expire (s)", base.DEC)
field("lft_hard_use", u64, "cxtp.ipsec.lifetime.hard_use_expires_seconds", "Hard use-expire (s)", base.DEC)

field("sel_daddr", ProtoField.ipv6, "cxtp.ipsec.sel.daddr", "Destination")
field("sel_daddr_v4", ProtoField.ipv4, "cxtp.ipsec.sel.daddr_v4", "Destination (IPv4)")
field("sel_saddr", ProtoField.ipv6, "cxtp.ipsec.sel.saddr", "Source")
field("sel_saddr_v4", ProtoField.ipv4, "cxtp.ipsec.sel.saddr_v4", "Source (IPv4)")
field("sel_dport", u16, "cxtp.ipsec.sel.dport", "Destination port", base.DEC)
field("sel_dport_mask", u16, "cxtp.ipsec.sel.dport_mask", "Destination port mask", base.HEX)
field("sel_sport", u16, "cxtp.ipsec.sel.sport", "Source port", base.DEC)
field("sel_sport_mask", u16, "cxtp.ipsec.sel.sport_mask", "Source port mask", base.HEX)
field("sel_family", u16, "cxtp.ipsec.sel.family", "Family", base.DEC, families)
field("sel_prefixlen_d", u8, "cxtp.ipsec.sel.prefixlen_d", "Destination prefix length", base.DEC)
field("sel_prefixlen_s", u8, "cxtp.ipsec.sel.prefixlen_s", "Source prefix length", base.DEC)
field("sel_proto", u8, "cxtp.ipsec.sel.proto", "Upper-layer protocol", base.DEC, ip_protocols)
field("sel_reserved", ProtoField.bytes, "cxtp.ipsec.sel.reserved", "Reserved")
field("sel_ifindex", ProtoField.int32, "cxtp.ipsec.sel.ifindex", "Interface index", base.DEC)
field("sel_user", u32, "cxtp.ipsec.sel.user", "User", base.DEC)

field("pol_length", u16, "cxtp.ipsec.policy.length", "Record length", base.DEC)
field("pol_dir", u8, "cxtp.ipsec.policy.dir", "Direction", base.DEC, policy_dirs)
field("pol_action", u8, "cxtp.ipsec.policy.action", "Action", base.DEC, policy_actions)
field("pol_flags", u8, "cxtp.ipsec.policy.flags", "Flags", base.HEX)
field("pol_share", u8, "cxtp.ipsec.policy.share", "Share", base.DEC)
field("pol_tmpl_count", u8, "cxtp.ipsec.policy.tmpl_count", "Number of templates", base.DEC)
field("pol_mark_present", u8, "cxtp.ipsec.policy.mark_present", "Mark present", base.DEC)
field("pol_priority", u32, "cxtp.ipsec.policy.priority", "Priority", base.DEC)
field("pol_index", u32, "cxtp.ipsec.policy.index", "Index (sender's)", base.DEC)
field("pol_if_id", u32, "cxtp.ipsec.policy.if_id", "Interface id", base.DEC)
field("pol_mark_value", u32, "cxtp.ipsec.policy.mark_value", "Mark value", base.HEX)
field("pol_mark_mask", u32, "cxtp.ipsec.policy.mark_mask", "Mark mask", base.HEX)

field("tmpl_daddr", ProtoField.ipv6, "cxtp.ipsec.tmpl.daddr", "Destination")
field("tmpl_daddr_v4", ProtoField.ipv4, "cxtp.ipsec.tmpl.daddr_v4", "Destination (IPv4)")
field("tmpl_saddr", ProtoField.ipv6, "cxtp.ipsec.tmpl.saddr", "Source")
field("tmpl_saddr_v4", ProtoField.ipv4, "cxtp.ipsec.tmpl.saddr_v4", "Source (IPv4)")
field("tmpl_spi", u32, "cxtp.ipsec.tmpl.spi", "SPI", base.HEX_DEC)
field("tmpl_reqid", u32, "cxtp.ipsec.tmpl.reqid", "Reqid", base.DEC)
field("tmpl_aalgos", u32, "cxtp.ipsec.tmpl.aalgos", "Allowed auth algorithms", base.HEX)
field("tmpl_ealgos", u32, "cxtp.ipsec.tmpl.ealgos", "Allowed encryption algorithms", base.HEX)
field("tmpl_calgos", u32, "cxtp.ipsec.tmpl.calgos", "Allowed compression algorithms", base.HEX)
field("tmpl_family", u16, "cxtp.ipsec.tmpl.family", "Family", base.DEC, families)
field("tmpl_proto", u8, "cxtp.ipsec.tmpl.proto", "Protocol", base.DEC, ipsec_protocols)
field("tmpl_mode", u8, "cxtp.ipsec.tmpl.mode", "Mode", base.DEC, xfrm_modes)
field("tmpl_share", u8, "cxtp.ipsec.tmpl.share", "Share", base.DEC)
field("tmpl_optional", u8, "cxtp.ipsec.tmpl.optional", "Optional", base.DEC)
field("tmpl_reserved", u16, "cxtp.ipsec.tmpl.reserved", "Reserved", base.HEX)

field("spi_old", u32, "cxtp.ipsec.spi_change.old", "Old SPI", base.HEX_DEC)
field("spi_new", u32, "cxtp.ipsec.spi_change.new", "New SPI", base.HEX_DEC)

do
    local list = {}
    for _, f in pairs(F) do
        list[#list + 1] = f
    end
    cxtp.fields = list
end

-- expert info
local E = {
    truncated = ProtoExpert.new("cxtp.expert.truncated", "Truncated CXTP field", expert.group.MALFORMED, expert.severity.ERROR),
    bad_length = ProtoExpert.new("cxtp.expert.bad_length", "Length field disagrees with the data", expert.group.MALFORMED, expert.severity.ERROR),
    bad_version = ProtoExpert.new("cxtp.expert.bad_version", "Unsupported CXTP version", expert.group.MALFORMED, expert.severity.ERROR),
    unknown_type = ProtoExpert.new("cxtp.expert.unknown_type", "Unknown CXTP message type", expert.group.MALFORMED, expert.severity.ERROR),
    trailing = ProtoExpert.new("cxtp.expert.trailing", "Unexpected octets after the message", expert.group.MALFORMED, expert.severity.ERROR),
    cdb_p_zero = ProtoExpert.new("cxtp.expert.cdb_p_zero_length", "CDB with P = 1 and Length 0", expert.group.MALFORMED, expert.severity.ERROR),
    cdb_overrun = ProtoExpert.new("cxtp.expert.cdb_overrun", "CDB runs past the end of the message", expert.group.MALFORMED, expert.severity.ERROR),
    status_overrun = ProtoExpert.new("cxtp.expert.status_overrun", "Status data runs past the end of the message", expert.group.MALFORMED, expert.severity.ERROR),
    status_failure = ProtoExpert.new("cxtp.expert.status_failure", "Context transfer status is not success", expert.group.RESPONSE_CODE, expert.severity.WARN),
    s_mismatch = ProtoExpert.new("cxtp.expert.s_flag_mismatch", "S flag disagrees with the status tuples", expert.group.PROTOCOL, expert.severity.WARN),
    key = ProtoExpert.new("cxtp.expert.key_material", "Key material in this message", expert.group.SECURITY, expert.severity.NOTE),
    zero_token = ProtoExpert.new("cxtp.expert.zero_token", "Zero token: no CTAR yet (network-initiated)", expert.group.SEQUENCE, expert.severity.CHAT),
    reserved = ProtoExpert.new("cxtp.expert.reserved_set", "Reserved bits set (ignored on receive)", expert.group.PROTOCOL, expert.severity.CHAT),
    icmp_checksum = ProtoExpert.new("cxtp.expert.icmp.bad_checksum", "Bad ICMP checksum", expert.group.CHECKSUM, expert.severity.ERROR),
    icmp_not_cxtp = ProtoExpert.new("cxtp.expert.icmp.not_cxtp", "Experimental Mobility subtype is not CXTP", expert.group.PROTOCOL, expert.severity.NOTE),
    icmp_code = ProtoExpert.new("cxtp.expert.icmp.bad_code", "ICMP code is not 0", expert.group.PROTOCOL, expert.severity.WARN),
    hop_limit = ProtoExpert.new("cxtp.expert.icmp.hop_limit", "Hop limit is not 255: receivers drop it (RFC 4067 §3.2)", expert.group.PROTOCOL, expert.severity.WARN),
    ipsec_malformed = ProtoExpert.new("cxtp.expert.ipsec.malformed", "Malformed IPsec context", expert.group.MALFORMED, expert.severity.ERROR),
    mld_malformed = ProtoExpert.new("cxtp.expert.mld.malformed", "Malformed MLD context", expert.group.MALFORMED, expert.severity.ERROR),
}
cxtp.experts = { E.truncated, E.bad_length, E.bad_version, E.unknown_type, E.trailing, E.cdb_p_zero,
                 E.cdb_overrun, E.status_overrun, E.status_failure, E.s_mismatch, E.key, E.zero_token,
                 E.reserved, E.icmp_checksum, E.icmp_not_cxtp, E.icmp_code, E.hop_limit,
                 E.ipsec_malformed, E.mld_malformed }

-- fields of other protocols, for the ICMPv6 pseudo-header and the hop limit
local f_ipv6_src = Field.new("ipv6.src")
local f_ipv6_dst = Field.new("ipv6.dst")
local f_ipv6_hlim = Field.new("ipv6.hlim")
local f_ip_ttl = Field.new("ip.ttl")

-- --- helpers ----------------------------------------------------------------------------------------

local function hex32(value)
    return string.format("0x%08x", value)
end

local function name_of(names, value, fallback)
    return names[value] or string.format("%s %d", fallback or "unknown", value)
end

local function u64_text(range)
    return tostring(range:uint64())
end

local function time_text(range)
    local seconds = range:uint64():tonumber()
    if seconds == 0 then
        return "not set"
    end
    return os.date("!%Y-%m-%d %H:%M:%S UTC", seconds)
end

-- A bounded cursor over a Tvb: every short read becomes expert info instead of a Lua error.
local Cursor = {}
Cursor.__index = Cursor

local function cursor(tvb, offset, stop, tree)
    return setmetatable({ tvb = tvb, off = offset, stop = stop, tree = tree, ok = true }, Cursor)
end

function Cursor:left()
    return self.stop - self.off
end

function Cursor:fail(expert_field, text, tree)
    tree = tree or self.tree
    if self:left() > 0 then
        tree:add_tvb_expert_info(expert_field, self.tvb(self.off, self:left()), text)
    else
        tree:add_proto_expert_info(expert_field, text)
    end
    self.ok = false
    return false
end

function Cursor:need(count, what, tree, expert_field)
    if not self.ok then
        return false
    end
    if self.off + count > self.stop then
        return self:fail(expert_field or E.truncated,
            string.format("Truncated %s: need %d octets, %d left", what, count, self:left()), tree)
    end
    return true
end

function Cursor:take(count)
    local range = self.tvb(self.off, count)
    self.off = self.off + count
    return range
end

-- Add a field for `count` octets (when they are there); returns the range or nil.
function Cursor:add(tree, f, count, what)
    if not self:need(count, what or "field", tree) then
        return nil
    end
    local range = self:take(count)
    tree:add(f, range)
    return range
end

local function address_text(range, ipv4)
    if ipv4 then
        return tostring(range:ipv4())
    end
    return tostring(range:ipv6())
end

-- An address of an xfrm_address_t (16 octets, IPv4 in the first 4), typed by `family`.
local function add_xfrm_address(tree, f6, f4, range, family)
    if family == 2 then
        local item = tree:add(f4, range(0, 4))
        return tostring(range(0, 4):ipv4()), item
    end
    local item = tree:add(f6, range)
    return tostring(range:ipv6()), item
end

-- --- IPsec context (FPT 0x8001) ---------------------------------------------------------------------

local function ipsec_bad(c, tree, text)
    return c:fail(E.ipsec_malformed, text, tree)
end

local function dissect_lifetime_cfg(c, tree)
    if not c:need(64, "lifetime configuration", tree, E.ipsec_malformed) then
        return false
    end
    local sub = tree:add(cxtp, c.tvb(c.off, 64), "Lifetime configuration")
    local names = { "lft_soft_bytes", "lft_hard_bytes", "lft_soft_packets", "lft_hard_packets",
                    "lft_soft_add", "lft_hard_add", "lft_soft_use", "lft_hard_use" }
    for i, key in ipairs(names) do
        local range = c:take(8)
        local item = sub:add(F[key], range)
        local value = range:uint64()
        if i <= 4 and value == UInt64.max() then
            item:append_text(" (no limit)")
        elseif i > 4 and value == UInt64(0) then
            item:append_text(" (no limit)")
        end
    end
    return true
end

local function dissect_selector(c, tree, label)
    if not c:need(56, "selector", tree, E.ipsec_malformed) then
        return false, ""
    end
    local t = c.tvb
    local o = c.off
    local family = t(o + 40, 2):uint()
    local sub = tree:add(cxtp, t(o, 56), label)
    local daddr = add_xfrm_address(sub, F.sel_daddr, F.sel_daddr_v4, t(o, 16), family)
    local saddr = add_xfrm_address(sub, F.sel_saddr, F.sel_saddr_v4, t(o + 16, 16), family)
    sub:add(F.sel_dport, t(o + 32, 2))
    sub:add(F.sel_dport_mask, t(o + 34, 2))
    sub:add(F.sel_sport, t(o + 36, 2))
    sub:add(F.sel_sport_mask, t(o + 38, 2))
    sub:add(F.sel_family, t(o + 40, 2))
    local pld, pls, proto = t(o + 42, 1):uint(), t(o + 43, 1):uint(), t(o + 44, 1):uint()
    sub:add(F.sel_prefixlen_d, t(o + 42, 1))
    sub:add(F.sel_prefixlen_s, t(o + 43, 1))
    sub:add(F.sel_proto, t(o + 44, 1))
    sub:add(F.sel_reserved, t(o + 45, 3))
    sub:add(F.sel_ifindex, t(o + 48, 4))
    sub:add(F.sel_user, t(o + 52, 4))
    c.off = o + 56
    local text = string.format("%s/%d -> %s/%d proto %s", saddr, pls, daddr, pld,
        ip_protocols[proto] or tostring(proto))
    sub:append_text(": " .. text)
    if family ~= 0 and family ~= 2 and family ~= 10 then
        sub:add_proto_expert_info(E.ipsec_malformed, "unknown selector family " .. family)
        c.ok = false
        return false, text
    end
    return true, text
end

local function dissect_sa(c, tree, index)
    local t = c.tvb
    local start = c.off
    if not c:need(64, "SA record", tree, E.ipsec_malformed) then
        return false
    end
    local length = t(start, 2):uint()
    local family = t(start + 2, 2):uint()
    local alg_count = t(start + 7, 1):uint()
    local record_end = start + length
    local span = math.min(math.max(length, 64), c.stop - start)
    local sub = tree:add(cxtp, t(start, span), string.format("SA %d", index))
    sub:add(F.sa_length, t(start, 2))
    sub:add(F.sa_family, t(start + 2, 2))
    sub:add(F.sa_proto, t(start + 4, 1))
    sub:add(F.sa_mode, t(start + 5, 1))
    local flags_item = sub:add(F.sa_flags, t(start + 6, 1))
    flags_item:add(F.sa_flag_esn, t(start + 6, 1))
    sub:add(F.sa_alg_count, t(start + 7, 1))
    sub:add(F.sa_spi, t(start + 8, 4))
    sub:add(F.sa_reqid, t(start + 12, 4))
    sub:add(F.sa_extra_flags, t(start + 16, 4))
    sub:add(F.sa_if_id, t(start + 20, 4))
    sub:add(F.sa_mark_value, t(start + 24, 4))
    sub:add(F.sa_mark_mask, t(start + 28, 4))
    local daddr = add_xfrm_address(sub, F.sa_daddr, F.sa_daddr_v4, t(start + 32, 16), family)
    local saddr = add_xfrm_address(sub, F.sa_saddr, F.sa_saddr_v4, t(start + 48, 16), family)
    local spi = t(start + 8, 4):uint()
    local proto = t(start + 4, 1):uint()
    local mode = t(start + 5, 1):uint()
    sub:append_text(string.format(": %s %s %s -> %s SPI %s", ipsec_protocols[proto] or tostring(proto),
        xfrm_modes[mode] or tostring(mode), saddr, daddr, hex32(spi)))
    c.off = start + 64
    if length < 64 or record_end > c.stop then
        return ipsec_bad(c, sub, string.format("SA record length %d out of bounds", length))
    end
    if family ~= 2 and family ~= 10 then
        return ipsec_bad(c, sub, "unknown address family " .. family)
    end
    -- the record's own bound for everything that follows
    local outer_stop = c.stop
    c.stop = record_end
    local ok = dissect_selector(c, sub, "SA selector")
    ok = ok and dissect_lifetime_cfg(c, sub)
    if ok and c:need(32, "lifetime current", sub, E.ipsec_malformed) then
        local cur = sub:add(cxtp, t(c.off, 32), "Lifetime used")
        cur:add(F.cur_bytes, c:take(8))
        cur:add(F.cur_packets, c:take(8))
        local range = c:take(8)
        cur:add(F.cur_add_time, range):append_text(" (" .. time_text(range) .. ")")
        range = c:take(8)
        cur:add(F.cur_use_time, range):append_text(" (" .. time_text(range) .. ")")
    end
    if c.ok and c:need(24, "replay state", sub, E.ipsec_malformed) then
        local words = t(c.off + 22, 2):uint()
        local replay_flags = t(c.off + 20, 1):uint()
        local replay = sub:add(cxtp, t(c.off, math.min(24 + 4 * words, c:left())), "Replay state")
        replay:add(F.replay_oseq, c:take(8))
        replay:add(F.replay_seq, c:take(8))
        replay:add(F.replay_window, c:take(4))
        local flags_range = c:take(1)
        local fi = replay:add(F.replay_flags, flags_range)
        fi:add(F.replay_flag_esn, flags_range)
        fi:add(F.replay_flag_mark, flags_range)
        replay:add(F.replay_reserved, c:take(1))
        replay:add(F.replay_words, c:take(2))
        if band(replay_flags, 0xFC) ~= 0 then
            ipsec_bad(c, replay, string.format("unknown replay flags 0x%02x", replay_flags))
        elseif words * 32 > 4096 then
            ipsec_bad(c, replay, string.format("replay bitmap of %d words exceeds XFRMA_REPLAY_ESN_MAX", words))
        elseif c:need(4 * words, "replay bitmap", replay, E.ipsec_malformed) then
            for _ = 1, words do
                replay:add(F.replay_bitmap, c:take(4))
            end
        end
    end
    local names = {}
    for i = 1, alg_count do
        if not c.ok then
            break
        end
        if not c:need(8, "algorithm", sub, E.ipsec_malformed) then
            break
        end
        local o = c.off
        local kind, name_len, key_len = t(o, 1):uint(), t(o + 1, 1):uint(), t(o + 2, 2):uint()
        local tail = name_len + key_len
        local pad = (4 - tail % 4) % 4
        local alg = sub:add(cxtp, t(o, math.min(8 + tail + pad, c:left())), string.format("Algorithm %d", i))
        alg:add(F.alg_kind, c:take(1))
        alg:add(F.alg_name_length, c:take(1))
        alg:add(F.alg_key_length, c:take(2))
        alg:add(F.alg_bits, c:take(4))
        if kind > 4 then
            ipsec_bad(c, alg, "unknown algorithm kind " .. kind)
            break
        end
        if name_len == 0 or name_len > 63 then
            ipsec_bad(c, alg, "bad algorithm name length " .. name_len)
            break
        end
        if not c:need(tail, "algorithm name and key", alg, E.ipsec_malformed) then
            break
        end
        local name_range = c:take(name_len)
        alg:add(F.alg_name, name_range)
        local name = name_range:string()
        if not name:match("^[\32-\126]+$") then
            ipsec_bad(c, alg, "algorithm name is not printable ASCII")
            break
        end
        if key_len > 0 then
            alg:add(F.alg_key, c:take(key_len))
        end
        if pad > 0 then
            if c:left() >= pad then
                alg:add(F.alg_padding, c:take(pad))
            else
                c.off = c.stop
            end
        end
        local bits = t(o + 4, 4):uint()
        local text = string.format("%s %s, %d-bit key", algorithm_kinds[kind], name, key_len * 8)
        if kind == 2 or kind == 3 then
            text = text .. string.format(", %d-bit ICV", bits)
        elseif bits > 0 then
            text = text .. string.format(", bits %d", bits)
        end
        alg:append_text(": " .. text)
        names[#names + 1] = name
    end
    if c.ok and c.off ~= record_end then
        ipsec_bad(c, sub, string.format("SA record length %d does not match its content", length))
    end
    if #names > 0 then
        sub:append_text(" (" .. table.concat(names, ", ") .. ")")
    end
    c.stop = outer_stop
    local ok_record = c.ok
    c.off = record_end
    return ok_record
end

local function dissect_policy(c, tree, index)
    local t = c.tvb
    local start = c.off
    if not c:need(28, "policy record", tree, E.ipsec_malformed) then
        return false
    end
    local length = t(start, 2):uint()
    local dir, action = t(start + 2, 1):uint(), t(start + 3, 1):uint()
    local count, has_mark = t(start + 6, 1):uint(), t(start + 7, 1):uint()
    local expected = 28 + 56 + 64 + 60 * count
    local sub = tree:add(cxtp, t(start, math.min(math.max(length, 28), c.stop - start)),
        string.format("Policy %d", index))
    sub:add(F.pol_length, t(start, 2))
    sub:add(F.pol_dir, t(start + 2, 1))
    sub:add(F.pol_action, t(start + 3, 1))
    sub:add(F.pol_flags, t(start + 4, 1))
    sub:add(F.pol_share, t(start + 5, 1))
    sub:add(F.pol_tmpl_count, t(start + 6, 1))
    sub:add(F.pol_mark_present, t(start + 7, 1))
    sub:add(F.pol_priority, t(start + 8, 4))
    sub:add(F.pol_index, t(start + 12, 4))
    sub:add(F.pol_if_id, t(start + 16, 4))
    sub:add(F.pol_mark_value, t(start + 20, 4))
    sub:add(F.pol_mark_mask, t(start + 24, 4))
    c.off = start + 28
    sub:append_text(string.format(": dir %s, %s, priority %d", policy_dirs[dir] or tostring(dir),
        policy_actions[action] or tostring(action), t(start + 8, 4):uint()))
    if length ~= expected or start + length > c.stop then
        return ipsec_bad(c, sub, string.format("policy record length %d, expected %d", length, expected))
    end
    if dir > 2 or action > 1 or has_mark > 1 then
        return ipsec_bad(c, sub, "policy direction, action or mark flag out of range")
    end
    local ok, text = dissect_selector(c, sub, "Policy selector")
    if ok then
        sub:append_text(", " .. text)
    end
    ok = ok and dissect_lifetime_cfg(c, sub)
    for i = 1, count do
        if not ok or not c:need(60, "template", sub, E.ipsec_malformed) then
            break
        end
        local o = c.off
        local family = t(o + 52, 2):uint()
        local tmpl = sub:add(cxtp, t(o, 60), string.format("Template %d", i))
        local daddr = add_xfrm_address(tmpl, F.tmpl_daddr, F.tmpl_daddr_v4, t(o, 16), family)
        local saddr = add_xfrm_address(tmpl, F.tmpl_saddr, F.tmpl_saddr_v4, t(o + 16, 16), family)
        tmpl:add(F.tmpl_spi, t(o + 32, 4))
        tmpl:add(F.tmpl_reqid, t(o + 36, 4))
        tmpl:add(F.tmpl_aalgos, t(o + 40, 4))
        tmpl:add(F.tmpl_ealgos, t(o + 44, 4))
        tmpl:add(F.tmpl_calgos, t(o + 48, 4))
        tmpl:add(F.tmpl_family, t(o + 52, 2))
        tmpl:add(F.tmpl_proto, t(o + 54, 1))
        tmpl:add(F.tmpl_mode, t(o + 55, 1))
        tmpl:add(F.tmpl_share, t(o + 56, 1))
        tmpl:add(F.tmpl_optional, t(o + 57, 1))
        tmpl:add(F.tmpl_reserved, t(o + 58, 2))
        local mode = t(o + 55, 1):uint()
        tmpl:append_text(string.format(": %s %s %s -> %s", ipsec_protocols[t(o + 54, 1):uint()] or "?",
            xfrm_modes[mode] or tostring(mode), saddr, daddr))
        c.off = o + 60
        if family ~= 2 and family ~= 10 then
            ok = ipsec_bad(c, tmpl, "unknown template family " .. family)
        end
    end
    local ok_record = c.ok
    c.off = start + length
    return ok_record
end

-- The data of one FPT 0x8001 CDB: `range` covers the CDB data (with its zero padding).
local function dissect_ipsec_context(range, tree)
    local tvb = range:tvb()
    local sub = tree:add(cxtp, range, "IPsec context")
    local c = cursor(tvb, 0, tvb:len(), sub)
    if not c:need(16, "IPsec context header", sub, E.ipsec_malformed) then
        return
    end
    local version, flags = tvb(0, 1):uint(), tvb(1, 1):uint()
    local sa_count, policy_count = tvb(2, 1):uint(), tvb(3, 1):uint()
    sub:add(F.ipsec_version, tvb(0, 1))
    sub:add(F.ipsec_flags, tvb(1, 1))
    sub:add(F.ipsec_sa_count, tvb(2, 1))
    sub:add(F.ipsec_policy_count, tvb(3, 1))
    sub:add(F.ipsec_captured_at, tvb(4, 8)):append_text(" (" .. time_text(tvb(4, 8)) .. ")")
    sub:add(F.ipsec_reserved, tvb(12, 4))
    c.off = 16
    sub:append_text(string.format(" v%d: %d SA%s, %d polic%s", version, sa_count, sa_count == 1 and "" or "s",
        policy_count, policy_count == 1 and "y" or "ies"))
    if version ~= 1 then
        return ipsec_bad(c, sub, "unsupported IPsec context version " .. version)
    end
    if flags ~= 0 or tvb(12, 4):uint() ~= 0 then
        return ipsec_bad(c, sub, "reserved header bits set")
    end
    for i = 1, sa_count do
        if not dissect_sa(c, sub, i) then
            return
        end
    end
    for i = 1, policy_count do
        if not dissect_policy(c, sub, i) then
            return
        end
    end
    local left = c:left()
    if left > 0 then
        local trailer = tvb(c.off, left)
        sub:add(F.ipsec_padding, trailer)
        local nonzero = false
        for i = 0, left - 1 do
            if trailer(i, 1):uint() ~= 0 then
                nonzero = true
            end
        end
        if left > 7 or nonzero then
            ipsec_bad(c, sub, string.format("%d unexpected octets after the context", left))
        end
    end
end

-- SPI changes in a CTAA status tuple of FPT 0x8001 (old SPI, new SPI; 8 octets each).
local function dissect_spi_changes(range, tree)
    local n = range:len()
    if n % 8 ~= 0 then
        tree:add_tvb_expert_info(E.ipsec_malformed, range,
            string.format("SPI changes length %d is not a multiple of 8", n))
        return
    end
    for i = 0, n - 8, 8 do
        local sub = tree:add(cxtp, range(i, 8), "SPI change")
        sub:add(F.spi_old, range(i, 4))
        sub:add(F.spi_new, range(i + 4, 4))
        sub:append_text(string.format(": %s -> %s", hex32(range(i, 4):uint()), hex32(range(i + 4, 4):uint())))
    end
end

-- App. B MLD context: 64-bit subnet prefix + group address, then zero padding.
local function dissect_mld_context(range, tree)
    if range:len() < 24 then
        tree:add_tvb_expert_info(E.mld_malformed, range, "MLD context must be 24 octets plus zero padding")
        return
    end
    local sub = tree:add(cxtp, range(0, 24), "Multicast listener context")
    local groups = {}
    for i = 0, 6, 2 do
        groups[#groups + 1] = string.format("%x", range(i, 2):uint())
    end
    while #groups > 0 and groups[#groups] == "0" do
        groups[#groups] = nil
    end
    local prefix_text = (#groups == 0 and "::" or table.concat(groups, ":") .. "::") .. "/64"
    sub:add(F.mld_prefix, range(0, 8)):append_text(" (" .. prefix_text .. ")")
    sub:add(F.mld_group, range(8, 16))
    sub:append_text(": " .. prefix_text .. " group " .. tostring(range(8, 16):ipv6()))
end

-- --- CXTP message ---------------------------------------------------------------------------------

local function dissect_cdbs(c, tree, is_request)
    local index = 0
    local fpts = {}
    while c.ok and c:left() > 0 do
        index = index + 1
        local t = c.tvb
        local start = c.off
        if not c:need(4, "CDB header", tree) then
            break
        end
        local fpt, words, flags = t(start, 2):uint(), t(start + 2, 1):uint(), t(start + 3, 1):uint()
        local size = words == 0 and 4 or words * 8
        local has_pv = band(flags, 0x80) ~= 0
        local sub = tree:add(cxtp, t(start, math.min(size, c:left())),
            string.format("Context Data Block %d: FPT 0x%04x (%s)", index, fpt, fpt_names[fpt] or "unknown"))
        sub:add(F.cdb_fpt, t(start, 2))
        sub:add(F.cdb_length, t(start + 2, 1))
        sub:add(F.cdb_p, t(start + 3, 1))
        sub:add(F.cdb_reserved, t(start + 3, 1))
        c.off = start + 4
        fpts[#fpts + 1] = string.format("0x%04x", fpt)
        if words == 0 then
            sub:append_text(", header only")
            if has_pv then
                c:fail(E.cdb_p_zero, "CDB with P = 1 cannot have Length 0", sub)
                break
            end
            if is_request then
                sub:add(F.cdb_request, t(start, 4), true):set_generated()
            end
        else
            if start + size > c.stop then
                c:fail(E.cdb_overrun, string.format("CDB of %d octets runs past the message (%d left)", size,
                    c.stop - start), sub)
                break
            end
            local data_start = c.off
            if has_pv then
                sub:add(F.cdb_pv, c:take(4))
                data_start = c.off
            end
            local data_len = start + size - data_start
            if data_len > 0 then
                local data = t(data_start, data_len)
                local all_zero = true
                for i = 0, data_len - 1 do
                    if data(i, 1):uint() ~= 0 then
                        all_zero = false
                        break
                    end
                end
                if is_request and all_zero then
                    sub:add(F.cdb_padding, data)
                    sub:add(F.cdb_request, t(start, size), true):set_generated()
                else
                    sub:add(F.cdb_data, data)
                    if fpt == IPSEC_CONTEXT_FPT then
                        dissect_ipsec_context(data, sub)
                    elseif fpt == FPT_MLD then
                        dissect_mld_context(data, sub)
                    end
                end
            elseif is_request then
                sub:add(F.cdb_request, t(start, size), true):set_generated()
            end
            c.off = start + size
        end
    end
    return fpts
end

local function dissect_statuses(c, tree, message_type, options_only)
    local all_ok = true
    local parts = {}
    local index = 0
    while c.ok and c:left() > 0 do
        -- a CTC carries only option tuples: anything else is left for the trailing-octets check
        if options_only and (c:left() < 2 or not is_option(c.tvb(c.off, 2):uint())) then
            break
        end
        index = index + 1
        local t = c.tvb
        local start = c.off
        if not c:need(4, "status tuple", tree) then
            break
        end
        local fpt, status, words = t(start, 2):uint(), t(start + 2, 1):uint(), t(start + 3, 1):uint()
        local sub = tree:add(cxtp, t(start, math.min(4 + 4 * words, c:left())),
            string.format("Status %d: FPT 0x%04x", index, fpt))
        sub:add(F.status_fpt, t(start, 2))
        local status_item = sub:add(F.status_code, t(start + 2, 1))
        local specific = context_status_names[fpt] and context_status_names[fpt][status]
        if specific then
            status_item:append_text(" [" .. specific .. "]")
        end
        sub:add(F.status_words, t(start + 3, 1))
        c.off = start + 4
        local generic = status_names[status]
        local label = (generic and specific) and (generic .. " or " .. specific)
            or specific or generic or string.format("0x%02x", status)
        sub:append_text(", " .. label)
        parts[#parts + 1] = string.format("0x%04x=%s", fpt, label)
        if status ~= 0 then
            all_ok = false
            sub:add_proto_expert_info(E.status_failure, string.format("FPT 0x%04x: status 0x%02x (%s)", fpt,
                status, label))
        end
        if words > 0 then
            if not c:need(4 * words, "status data", sub, E.status_overrun) then
                break
            end
            local data = c:take(4 * words)
            sub:add(F.status_data, data)
            if fpt == IPSEC_CONTEXT_FPT and message_type == 2 then
                dissect_spi_changes(data, sub)
            end
        end
    end
    return all_ok, parts
end

local function add_address(c, tree, ipv4, f6, f4, what)
    local size = ipv4 and 4 or 16
    if not c:need(size, what, tree) then
        return nil
    end
    local range = c:take(size)
    tree:add(ipv4 and f4 or f6, range)
    return address_text(range, ipv4)
end

-- Dissect one CXTP message that starts at `offset` and may use `available` octets.
-- Returns the number of octets it took (its Length when that is sane) and a one-line summary.
local function dissect_message(tvb, pinfo, tree, offset, available, carrier)
    local root
    if available > 0 then
        root = tree:add(cxtp, tvb(offset, available))
    else
        root = tree:add(cxtp, tvb(offset - 1, 1)) -- nothing after the carrier's header
        root:set_len(0)
    end
    if carrier then
        root:append_text(" over " .. carrier)
    end
    if available < 4 then
        root:add_tvb_expert_info(E.truncated, tvb(offset, available),
            string.format("Truncated header: need 4 octets, %d left", available))
        return available, "CXTP (truncated)"
    end
    local first, second = tvb(offset, 1):uint(), tvb(offset + 1, 1):uint()
    local version, mtype = rshift(first, 5), band(first, 0x1F)
    local length = tvb(offset + 2, 2):uint()
    local ipv4 = band(second, 0x80) ~= 0
    local flag = band(second, 0x40) ~= 0
    root:add(F.version, tvb(offset, 1))
    root:add(F.type, tvb(offset, 1))
    local flags_item = root:add(F.flags, tvb(offset + 1, 1))
    flags_item:add(F.flag_v, tvb(offset + 1, 1))
    if mtype == 1 or mtype == 3 or mtype == 4 then
        flags_item:add(F.flag_a, tvb(offset + 1, 1))
        flags_item:add(F.flag_reserved, tvb(offset + 1, 1))
        if band(second, 0x3F) ~= 0 then
            flags_item:add_proto_expert_info(E.reserved)
        end
    elseif mtype == 5 then
        flags_item:add(F.flag_s, tvb(offset + 1, 1))
        flags_item:add(F.flag_reserved, tvb(offset + 1, 1))
        if band(second, 0x3F) ~= 0 then
            flags_item:add_proto_expert_info(E.reserved)
        end
    else
        flags_item:add(F.flag_reserved7, tvb(offset + 1, 1))
        if band(second, 0x7F) ~= 0 then
            flags_item:add_proto_expert_info(E.reserved)
        end
    end
    local length_item = root:add(F.length, tvb(offset + 2, 2))
    local name = message_types[mtype]
    root:append_text(", " .. (name and (message_names[mtype] .. " (" .. name .. ")") or ("type " .. mtype)))
    if version ~= 1 then
        root:add_proto_expert_info(E.bad_version, "Unsupported CXTP version " .. version)
        return available, string.format("CXTP version %d", version)
    end
    if length < 4 then
        length_item:add_proto_expert_info(E.bad_length, string.format("Length %d shorter than the header", length))
        return available, "CXTP (bad length)"
    end
    local stop = offset + math.min(length, available)
    if length > available then
        length_item:add_proto_expert_info(E.bad_length,
            string.format("Length field says %d octets, only %d present", length, available))
    elseif length < available and carrier ~= "TCP" then
        length_item:add_proto_expert_info(E.bad_length,
            string.format("Length field says %d octets, got %d", length, available))
    end
    root:set_len(stop - offset)
    if not name then
        root:add_tvb_expert_info(E.unknown_type, tvb(offset, stop - offset), "Unknown message type " .. mtype)
        return stop - offset, string.format("CXTP type %d", mtype)
    end
    local c = cursor(tvb, offset + 4, stop, root)
    local summary = name
    local mn_prev
    if mtype == 1 then -- CTAR
        mn_prev = add_address(c, root, ipv4, F.mn_prev, F.mn_prev_v4, "MN previous address")
        local ar = add_address(c, root, ipv4, F.ar_addr, F.ar_addr_v4, "AR address")
        local seq = c:add(root, F.seq, 4, "sequence number")
        c:add(root, F.token, 4, "authorization token")
        if seq then
            summary = summary .. string.format(" seq=%s", hex32(seq:uint()))
        end
        if mn_prev then
            summary = summary .. " MN " .. mn_prev
        end
        if ar then
            summary = summary .. " AR " .. ar
        end
        local fpts = dissect_cdbs(c, root, true)
        if #fpts > 0 then
            summary = summary .. " req " .. table.concat(fpts, ",")
        end
    elseif mtype == 2 or mtype == 5 then -- CTAA, CTDR
        mn_prev = add_address(c, root, ipv4, F.mn_prev, F.mn_prev_v4, "MN previous address")
        if mtype == 5 then
            summary = summary .. (flag and " S=1" or " S=0")
        end
        if mn_prev then
            summary = summary .. " MN " .. mn_prev
        end
        local all_ok, parts = dissect_statuses(c, root, mtype)
        if #parts > 0 then
            summary = summary .. " [" .. table.concat(parts, " ") .. "]"
        end
        if mtype == 5 and c.ok and flag ~= all_ok then
            root:add_proto_expert_info(E.s_mismatch, string.format("S = %d but %s", flag and 1 or 0,
                all_ok and "every status is success" or "a status is not success"))
        end
    elseif mtype == 3 or mtype == 4 then -- CTD, PCTD
        c:add(root, F.elapsed, 4, "elapsed time")
        mn_prev = add_address(c, root, ipv4, F.mn_prev, F.mn_prev_v4, "MN previous address")
        if mn_prev then
            summary = summary .. " MN " .. mn_prev
        end
        if mtype == 4 then
            c:add(root, F.algorithm, 2, "algorithm")
            local key_length = c:add(root, F.key_length, 2, "key length")
            if key_length then
                local n = key_length:uint()
                if c:need(n, "key", root) and n > 0 then
                    local item = root:add(F.key, c:take(n))
                    item:add_proto_expert_info(E.key, string.format("PCTD carries a %d-octet key", n))
                end
            end
        end
        local fpts = dissect_cdbs(c, root, false)
        if #fpts > 0 then
            summary = summary .. " CDB " .. table.concat(fpts, ",")
        end
    elseif mtype == 6 then -- CTC
        mn_prev = add_address(c, root, ipv4, F.mn_prev, F.mn_prev_v4, "MN previous address")
        if mn_prev then
            summary = summary .. " MN " .. mn_prev
        end
        dissect_statuses(c, root, mtype, true) -- our options (none from an RFC-exact peer)
    elseif mtype == 7 then -- CT-Req
        mn_prev = add_address(c, root, ipv4, F.mn_prev, F.mn_prev_v4, "MN previous address")
        local seq = c:add(root, F.seq, 4, "sequence number")
        local token = c:add(root, F.token, 4, "authorization token")
        if token and token:uint() == 0 then
            root:add_proto_expert_info(E.zero_token)
        end
        if seq then
            summary = summary .. string.format(" seq=%s", hex32(seq:uint()))
        end
        if mn_prev then
            summary = summary .. " MN " .. mn_prev
        end
        local fpts = dissect_cdbs(c, root, true)
        if #fpts > 0 then
            summary = summary .. " req " .. table.concat(fpts, ",")
        end
    end
    if c.ok and c:left() > 0 then
        root:add(F.trailing, c.tvb(c.off, c:left()))
        c:fail(E.trailing, string.format("%d unexpected octets after the %s", c:left(), name), root)
    end
    if length < available and carrier ~= "TCP" then
        root:add(F.trailing, tvb(stop, available - (stop - offset)))
    end
    return stop - offset, summary
end

local function set_info(pinfo, summary)
    pinfo.cols.protocol = "CXTP"
    local count = tonumber(pinfo.private["cxtp_messages"] or "0")
    if count == 0 then
        pinfo.cols.info = summary
    else
        pinfo.cols.info:append(", " .. summary)
    end
    pinfo.private["cxtp_messages"] = tostring(count + 1)
end

-- SCTP: one CXTP message per user message.
function cxtp.dissector(tvb, pinfo, tree)
    local n = tvb:len()
    local _, summary = dissect_message(tvb, pinfo, tree, 0, n, "SCTP")
    set_info(pinfo, summary)
    return n
end

-- TCP: messages cut from the stream by their Length field (nodes/cxtp_transport.py TcpTransport).
local cxtp_tcp = Proto("cxtp_tcp", "CXTP over TCP")

local function tcp_pdu_length(tvb, pinfo, offset)
    local version = rshift(tvb(offset, 1):uint(), 5)
    local length = tvb(offset + 2, 2):uint()
    if version ~= 1 or length < 4 then
        -- the stream lost its framing (the transport drops the connection): show the rest as one blob
        return tvb:len() - offset
    end
    return length
end

local function tcp_pdu(tvb, pinfo, tree)
    local n = tvb:len()
    local _, summary = dissect_message(tvb, pinfo, tree, 0, n, "TCP")
    set_info(pinfo, summary)
    return n
end

function cxtp_tcp.dissector(tvb, pinfo, tree)
    return dissect_tcp_pdus(tvb, tree, 4, tcp_pdu_length, tcp_pdu, true)
end

-- ICMP Experimental Mobility (RFC 4065 §8): hooks in front of the ICMPv6 and ICMP dissectors.
local function ones_complement_sum(bytes, sum)
    local n = bytes:len()
    for i = 0, n - 2, 2 do
        sum = sum + bytes:get_index(i) * 256 + bytes:get_index(i + 1)
    end
    if n % 2 == 1 then
        sum = sum + bytes:get_index(n - 1) * 256
    end
    return sum
end

local function fold(sum)
    while sum > 0xFFFF do
        sum = band(sum, 0xFFFF) + rshift(sum, 16)
    end
    return band(0xFFFF - sum, 0xFFFF)
end

local function last(extractor)
    local all = { extractor() }
    return all[#all]
end

local function icmp_checksum(tvb, ipv6)
    if tvb:len() < tvb:reported_len() then
        return nil -- cut short by the capture: cannot verify
    end
    local message = tvb:bytes()
    message:set_index(2, 0)
    message:set_index(3, 0)
    local sum = 0
    if ipv6 then
        local src, dst = last(f_ipv6_src), last(f_ipv6_dst)
        if not src or not dst then
            return nil
        end
        local n = message:len()
        local pseudo = src.range:bytes() .. dst.range:bytes()
        sum = ones_complement_sum(pseudo, 0)
        sum = sum + rshift(n, 16) + band(n, 0xFFFF) + 58
    end
    sum = ones_complement_sum(message, sum)
    return fold(sum)
end

local function dissect_experimental_mobility(tvb, pinfo, tree, ipv6)
    local family = ipv6 and "ICMPv6" or "ICMP"
    local n = tvb:len()
    local root_tree = tree
    local header_len = math.min(8, n)
    local em = root_tree:add(cxtp, tvb(0, header_len), family .. " Experimental Mobility (RFC 4065)")
    em:add(F.icmp_type, tvb(0, 1))
    if n < 8 then
        em:add_tvb_expert_info(E.truncated, tvb(0, n),
            string.format("Truncated Experimental Mobility header: need 8 octets, %d left", n))
        pinfo.cols.protocol = "CXTP"
        pinfo.cols.info = family .. " Experimental Mobility (truncated)"
        return n
    end
    local code_item = em:add(F.icmp_code, tvb(1, 1))
    if tvb(1, 1):uint() ~= 0 then
        code_item:add_proto_expert_info(E.icmp_code)
    end
    local checksum_item = em:add(F.icmp_checksum, tvb(2, 2))
    local computed = icmp_checksum(tvb, ipv6)
    local status = 2
    if computed ~= nil then
        if computed == tvb(2, 2):uint() then
            status = 1
            checksum_item:append_text(" [correct]")
        else
            status = 0
            checksum_item:append_text(string.format(" [incorrect, should be 0x%04x]", computed))
            checksum_item:add_proto_expert_info(E.icmp_checksum,
                string.format("Bad checksum 0x%04x, should be 0x%04x", tvb(2, 2):uint(), computed))
        end
    end
    em:add(F.icmp_checksum_status, tvb(2, 2), status):set_generated()
    local subtype = tvb(4, 1):uint()
    em:add(F.icmp_subtype, tvb(4, 1))
    em:add(F.icmp_reserved, tvb(5, 3))
    local hop = ipv6 and last(f_ipv6_hlim) or last(f_ip_ttl)
    if hop and hop.value ~= CXTP_HOP_LIMIT then
        em:add_proto_expert_info(E.hop_limit, string.format("%s %d, not 255: a receiver drops it",
            ipv6 and "Hop limit" or "TTL", hop.value))
    end
    pinfo.cols.protocol = "CXTP"
    if subtype ~= ICMP_SUBTYPE_CXTP then
        em:append_text(string.format(", subtype %d (%s)", subtype, icmp_subtypes[subtype] or "unknown"))
        em:add_proto_expert_info(E.icmp_not_cxtp, string.format("Subtype %d is not CXTP (1)", subtype))
        if n > 8 then
            em:add(F.icmp_data, tvb(8, n - 8))
        end
        pinfo.cols.info = string.format("%s Experimental Mobility subtype %d", family, subtype)
        return n
    end
    em:append_text(", subtype 1 (CXTP)")
    local _, summary = dissect_message(tvb, pinfo, tree, 8, n - 8, family)
    set_info(pinfo, summary)
    return n
end

local ip_proto = DissectorTable.get("ip.proto")
local icmpv6_dissector = ip_proto:get_dissector(58)
local icmp_dissector = ip_proto:get_dissector(1)

local cxtp_icmpv6 = Proto("cxtp_icmpv6", "CXTP hook on ICMPv6 (type 150)")
function cxtp_icmpv6.dissector(tvb, pinfo, tree)
    if tvb:len() >= 1 and tvb(0, 1):uint() == ICMPV6_TYPE_EXPERIMENTAL_MOBILITY then
        return dissect_experimental_mobility(tvb, pinfo, tree, true)
    end
    return icmpv6_dissector:call(tvb, pinfo, tree)
end

local cxtp_icmpv4 = Proto("cxtp_icmpv4", "CXTP hook on ICMP (type 41)")
function cxtp_icmpv4.dissector(tvb, pinfo, tree)
    if tvb:len() >= 1 and tvb(0, 1):uint() == ICMPV4_TYPE_EXPERIMENTAL_MOBILITY then
        return dissect_experimental_mobility(tvb, pinfo, tree, false)
    end
    return icmp_dissector:call(tvb, pinfo, tree)
end

if icmpv6_dissector then
    ip_proto:add(58, cxtp_icmpv6)
end
if icmp_dissector then
    ip_proto:add(1, cxtp_icmpv4)
end
DissectorTable.get("sctp.port"):add(CXTP_PORT, cxtp)
DissectorTable.get("tcp.port"):add(CXTP_PORT, cxtp_tcp)
