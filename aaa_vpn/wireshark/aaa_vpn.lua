-- aaa_vpn.lua: a Wireshark/tshark dissector for aaa_vpn's Mobile IPv4 messages.
--
-- Copyright (C) the aaa_vpn authors. SPDX-License-Identifier: GPL-2.0-or-later
--
-- What it decodes (numbers and layouts: docs/protocol.md sections 3.3 and 3.6-3.8a):
--
-- * aaa_vpn's binding messages, carried in the experimental Mobile IP message
--   type 255 (RFC 4064 section 3) with a sub-type: Binding Warning (1), Binding
--   Request (2), Binding Update (3), Binding Acknowledge (4) and Previous-FA
--   Notification (5), every header field and every extension: padding (0),
--   MN-HA/MN-FA/FA-HA authentication (32-34, RFC 5944 section 3.5), generalized
--   authentication (36, RFC 4721 section 5; subtype 255 = aaa_vpn's binding
--   authentication), CVSE (38) and NVSE (134) (RFC 3115), NAI (131, RFC 2794),
--   MN-FA challenge (132, RFC 4721) and any other skippable extension by its
--   Type and Length.
-- * Inside CVSEs and NVSEs of the project's enterprise number: the VPN path
--   (Vendor-CVSE-Type 1: role, key mode, ESP transform, flags, addresses, SPIs,
--   SA lifetime, traffic selectors, IKEv2 proposal, QoS, the RFC 5649-wrapped
--   keys as opaque bytes), the previous FA (Vendor-NVSE-Type 1) and the AAA
--   session with its key epoch (Vendor-NVSE-Type 2). The NVSEs are also
--   registered in the built-in dissector's "mip.nvse_ext" table, so Registration
--   Requests show them by name too.
--
-- How it hooks in: Wireshark 4.0's own Mobile IP dissector ("mip") marks every
-- type-255 message "Malformed Packet" and offers no table for it, so this
-- dissector takes the Mobile IP UDP ports (preference aaa_vpn.ports, default
-- 434) and hands every message that is not type 255 to "mip" unchanged.
-- Messages are read the way aaa_vpn.wire.mip reads them: an extension whose
-- Length runs past the message, a header field a binding message may not set,
-- or a VPN path whose counts do not add up is shown as an expert error.
--
-- Load it with `tshark -X lua_script:aaa_vpn.lua` or copy it into the personal
-- Lua plugins folder (`tshark -G folders`); aaa_vpn.wireshark prepares both
-- this and the RADIUS vendor dictionary (docs/wireshark.md).

local VENDOR_ID = 32473 -- aaa_vpn/wire/profile.py VENDOR_ID (RFC 5612's documentation PEN)
local MIP_PORT = 434

local p = Proto("aaa_vpn", "aaa_vpn Mobile IP binding message")

-- ------------------------------------------------------------------- value names

local message_types = {[1] = "Registration Request", [3] = "Registration Reply", [255] = "Experimental (RFC 4064)"}

local subtypes = {
    [1] = "Binding Warning",
    [2] = "Binding Request",
    [3] = "Binding Update",
    [4] = "Binding Acknowledge",
    [5] = "Previous-FA Notification",
}

local statuses = {
    [0] = "Accepted",
    [128] = "Reason unspecified",
    [129] = "Administratively prohibited",
    [130] = "Insufficient resources",
    [131] = "Sender failed authentication",
    [133] = "Identification mismatch",
    [134] = "Poorly formed",
    [140] = "Unknown VPN information (CVSE)",
    [160] = "VPN information invalid",
    [161] = "SA installation failed",
}

local vendors = {[VENDOR_ID] = "aaa_vpn (32473, RFC 5612 documentation PEN: a placeholder)"}

local extension_types = {
    [0] = "One-byte Padding",
    [32] = "Mobile-Home Authentication",
    [33] = "Mobile-Foreign Authentication",
    [34] = "Foreign-Home Authentication",
    [36] = "Generalized Authentication",
    [38] = "Critical Vendor/Organization Specific (CVSE)",
    [131] = "Mobile Node NAI",
    [132] = "MN-FA Challenge",
    [134] = "Normal Vendor/Organization Specific (NVSE)",
}

local auth_subtypes = {
    [1] = "MN-AAA",
    [2] = "FA-FA",
    [3] = "MN-GFA",
    [4] = "MN-PAR",
    [255] = "aaa_vpn binding authentication",
}

local cvse_types = {[1] = "VPN path"}
local nvse_types = {[1] = "Previous FA", [2] = "AAA session"}
local path_roles = {[1] = "FA-HA", [2] = "HA-GW", [3] = "FA-GW", [4] = "FA-FA"}
local key_modes = {[1] = "Manual", [2] = "IKEv2"}
local transforms = {[1] = "aes128gcm16", [2] = "aes256gcm16", [3] = "aes128-sha256", [4] = "aes256-sha256"}

-- ------------------------------------------------------------------- fields

local f = {
    type = ProtoField.uint8("aaa_vpn.type", "Message Type", base.DEC, message_types),
    subtype = ProtoField.uint8("aaa_vpn.subtype", "Sub-Type", base.DEC, subtypes),
    flags = ProtoField.uint8("aaa_vpn.flags", "Flags", base.HEX),
    flag_a = ProtoField.bool("aaa_vpn.flags.a", "Acknowledge requested (A)", 8, nil, 0x80),
    flag_reserved = ProtoField.uint8("aaa_vpn.flags.reserved", "Reserved flags", base.HEX, nil, 0x7f),
    status = ProtoField.uint8("aaa_vpn.status", "Status", base.DEC, statuses),
    vendor_id = ProtoField.uint32("aaa_vpn.vendor_id", "Vendor/Org-ID", base.DEC, vendors),
    lifetime = ProtoField.uint16("aaa_vpn.lifetime", "Lifetime", base.DEC),
    reserved = ProtoField.uint16("aaa_vpn.reserved", "Reserved", base.HEX),
    home_address = ProtoField.ipv4("aaa_vpn.home_address", "Home Address"),
    target_address = ProtoField.ipv4("aaa_vpn.target_address", "Target Address"),
    care_of_address = ProtoField.ipv4("aaa_vpn.care_of_address", "Care-of Address"),
    identification = ProtoField.absolute_time("aaa_vpn.identification", "Identification", base.UTC),
    extensions = ProtoField.none("aaa_vpn.extensions", "Extensions"),

    ext = ProtoField.none("aaa_vpn.ext", "Extension"),
    ext_type = ProtoField.uint8("aaa_vpn.ext.type", "Extension Type", base.DEC, extension_types),
    ext_length = ProtoField.uint16("aaa_vpn.ext.length", "Extension Length", base.DEC),
    ext_reserved = ProtoField.uint16("aaa_vpn.ext.reserved", "Reserved", base.HEX),
    cvse_reserved = ProtoField.uint8("aaa_vpn.cvse.reserved", "Reserved", base.HEX),
    ext_data = ProtoField.bytes("aaa_vpn.ext.data", "Data"),
    auth_subtype = ProtoField.uint8("aaa_vpn.auth.subtype", "Subtype", base.DEC, auth_subtypes),
    auth_spi = ProtoField.uint32("aaa_vpn.auth.spi", "SPI", base.DEC),
    authenticator = ProtoField.bytes("aaa_vpn.auth.authenticator", "Authenticator"),
    nai = ProtoField.string("aaa_vpn.nai", "NAI"),
    challenge = ProtoField.bytes("aaa_vpn.challenge", "Challenge"),
    cvse_vendor = ProtoField.uint32("aaa_vpn.cvse.vendor_id", "Vendor/Org-ID", base.DEC, vendors),
    cvse_type = ProtoField.uint16("aaa_vpn.cvse.type", "Vendor-CVSE-Type", base.DEC, cvse_types),
    nvse_vendor = ProtoField.uint32("aaa_vpn.nvse.vendor_id", "Vendor/Org-ID", base.DEC, vendors),
    nvse_type = ProtoField.uint16("aaa_vpn.nvse.type", "Vendor-NVSE-Type", base.DEC, nvse_types),
    vendor_value = ProtoField.bytes("aaa_vpn.vendor_value", "Vendor value"),

    previous_fa = ProtoField.ipv4("aaa_vpn.previous_fa", "Previous FA"),
    session_epoch = ProtoField.uint32("aaa_vpn.session.epoch", "Key epoch", base.DEC),
    session_id = ProtoField.string("aaa_vpn.session.id", "Session id"),

    path = ProtoField.none("aaa_vpn.path", "VPN path"),
    path_role = ProtoField.uint8("aaa_vpn.path.role", "Role", base.DEC, path_roles),
    path_key_mode = ProtoField.uint8("aaa_vpn.path.key_mode", "Key Mode", base.DEC, key_modes),
    path_transform = ProtoField.uint8("aaa_vpn.path.esp_transform", "ESP Transform", base.DEC, transforms),
    path_flags = ProtoField.uint8("aaa_vpn.path.flags", "Flags", base.HEX),
    path_flag_p = ProtoField.bool("aaa_vpn.path.flags.proposal", "IKEv2 proposal follows (P)", 8, nil, 0x80),
    path_flag_k = ProtoField.bool("aaa_vpn.path.flags.psk", "Wrapped keys end with an IKE PSK (K)", 8, nil, 0x40),
    path_flag_q = ProtoField.bool("aaa_vpn.path.flags.qos", "QoS block follows (Q)", 8, nil, 0x20),
    path_flag_g = ProtoField.bool("aaa_vpn.path.flags.gateway", "Ends at a gateway (G)", 8, nil, 0x10),
    path_flag_d = ProtoField.bool("aaa_vpn.path.flags.dynamic", "Dynamic gateway (D)", 8, nil, 0x08),
    path_flag_reserved = ProtoField.uint8("aaa_vpn.path.flags.reserved", "Reserved flags", base.HEX, nil, 0x07),
    path_local = ProtoField.ipv4("aaa_vpn.path.local", "Local Address"),
    path_peer = ProtoField.ipv4("aaa_vpn.path.peer", "Peer Address"),
    path_spi_in = ProtoField.uint32("aaa_vpn.path.spi_in", "SPI In (peer to receiver)", base.HEX_DEC),
    path_spi_out = ProtoField.uint32("aaa_vpn.path.spi_out", "SPI Out (receiver to peer)", base.HEX_DEC),
    path_lifetime = ProtoField.uint32("aaa_vpn.path.sa_lifetime", "SA Lifetime", base.DEC),
    path_local_count = ProtoField.uint8("aaa_vpn.path.local_ts_count", "Local TS count", base.DEC),
    path_remote_count = ProtoField.uint8("aaa_vpn.path.remote_ts_count", "Remote TS count", base.DEC),
    path_reserved = ProtoField.uint16("aaa_vpn.path.reserved", "Reserved", base.HEX),
    path_local_ts = ProtoField.string("aaa_vpn.path.local_ts", "Local traffic selector"),
    path_remote_ts = ProtoField.string("aaa_vpn.path.remote_ts", "Remote traffic selector"),
    ts_prefix = ProtoField.uint8("aaa_vpn.path.ts.prefix_length", "Prefix Length", base.DEC),
    ts_network = ProtoField.ipv4("aaa_vpn.path.ts.network", "Network"),
    path_proposal = ProtoField.string("aaa_vpn.path.ike_proposal", "IKEv2 proposal"),
    path_dscp = ProtoField.uint8("aaa_vpn.path.qos.dscp", "DSCP", base.DEC),
    path_rate = ProtoField.uint32("aaa_vpn.path.qos.rate_kbps", "Rate (kbit/s)", base.DEC),
    path_qos_name = ProtoField.string("aaa_vpn.path.qos.name", "QoS class"),
    path_wrapped_length = ProtoField.uint16("aaa_vpn.path.wrapped_length", "Wrapped Length", base.DEC),
    path_wrapped = ProtoField.bytes("aaa_vpn.path.wrapped_keys", "Wrapped keys (RFC 5649)"),
}
local field_list = {}
for _, field in pairs(f) do
    field_list[#field_list + 1] = field
end
p.fields = field_list

local e = {
    malformed = ProtoExpert.new(
        "aaa_vpn.malformed", "Malformed aaa_vpn Mobile IP message", expert.group.MALFORMED, expert.severity.ERROR
    ),
    not_ours = ProtoExpert.new(
        "aaa_vpn.not_ours",
        "Experimental message of another Vendor/Org-ID: not an aaa_vpn binding message (RFC 4064 section 6)",
        expert.group.PROTOCOL, expert.severity.WARN
    ),
    unknown_extension = ProtoExpert.new(
        "aaa_vpn.unknown_nonskippable",
        "Unknown non-skippable extension: receivers discard the message (RFC 5944 section 1.8)",
        expert.group.PROTOCOL, expert.severity.WARN
    ),
}
p.experts = {e.malformed, e.not_ours, e.unknown_extension}

p.prefs.ports = Pref.range("Mobile IP UDP ports", tostring(MIP_PORT),
    "UDP ports that carry Mobile IP (registrations go to the built-in dissector)", 65535)

-- ------------------------------------------------------------------- helpers

local function malformed(tree, range, text)
    tree:add_proto_expert_info(e.malformed, text)
    if range ~= nil then
        tree:add(f.ext_data, range):set_text("Undecoded: " .. text)
    end
end

local function ipv4_text(tvb, offset)
    local a, b, c, d = tvb(offset, 1):uint(), tvb(offset + 1, 1):uint(), tvb(offset + 2, 1):uint(), tvb(offset + 3, 1):uint()
    return string.format("%d.%d.%d.%d", a, b, c, d)
end

-- ------------------------------------------------------------------- VPN information

-- The NVSE values of docs/protocol.md sections 3.8 and 3.8a, from `tvb` (the
-- value only; nil when it is empty). Returns false if it is not one of ours.
local function dissect_nvse_value(vendor, nvse_type, tvb, tree)
    if vendor ~= VENDOR_ID then
        return false
    end
    local len = (tvb ~= nil) and tvb:len() or 0
    if nvse_type == 1 then
        if len ~= 4 then
            malformed(tree, len > 0 and tvb() or nil, "previous-FA NVSE value is " .. len .. " octets, expected 4")
        else
            tree:add(f.previous_fa, tvb(0, 4))
            tree:append_text(": previous FA " .. ipv4_text(tvb, 0))
        end
        return true
    elseif nvse_type == 2 then
        if len < 5 or len > 68 then
            malformed(tree, len > 0 and tvb() or nil, "session NVSE value is " .. len .. " octets, expected 5..68")
        else
            tree:add(f.session_epoch, tvb(0, 4))
            tree:add(f.session_id, tvb(4, len - 4))
            tree:append_text(string.format(": session %s, epoch %d", tvb(4, len - 4):string(), tvb(0, 4):uint()))
        end
        return true
    end
    return false
end

local function add_selectors(tvb, tree, offset, count, field, what)
    for _ = 1, count do
        local prefix = tvb(offset, 1):uint()
        local text = ipv4_text(tvb, offset + 1) .. "/" .. prefix
        local item = tree:add(field, tvb(offset, 5), text)
        item:add(f.ts_prefix, tvb(offset, 1))
        item:add(f.ts_network, tvb(offset + 1, 4))
        if prefix > 32 then
            item:add_proto_expert_info(e.malformed, what .. " prefix length " .. prefix .. " is more than 32")
        end
        offset = offset + 5
    end
    return offset
end

-- The VPN path (docs/protocol.md section 3.7) of a CVSE value `tvb`.
local function dissect_vpn_path(tvb, tree)
    local len = tvb:len()
    local item = tree:add(f.path, tvb())
    if len < 28 then
        malformed(item, len > 0 and tvb() or nil, "VPN path value is " .. len .. " octets: the fixed part is 28")
        return
    end
    local role, flags = tvb(0, 1):uint(), tvb(3, 1):uint()
    item:add(f.path_role, tvb(0, 1))
    item:add(f.path_key_mode, tvb(1, 1))
    item:add(f.path_transform, tvb(2, 1))
    local flag_item = item:add(f.path_flags, tvb(3, 1))
    for _, bit in ipairs({f.path_flag_p, f.path_flag_k, f.path_flag_q, f.path_flag_g, f.path_flag_d,
        f.path_flag_reserved}) do
        flag_item:add(bit, tvb(3, 1))
    end
    if bit32.band(flags, 0x07) ~= 0 or (bit32.band(flags, 0x08) ~= 0 and bit32.band(flags, 0x10) == 0) then
        flag_item:add_proto_expert_info(e.malformed, string.format("undefined VPN path flags 0x%02x", flags))
    end
    item:add(f.path_local, tvb(4, 4))
    item:add(f.path_peer, tvb(8, 4))
    item:add(f.path_spi_in, tvb(12, 4))
    item:add(f.path_spi_out, tvb(16, 4))
    item:add(f.path_lifetime, tvb(20, 4))
    local n_local, n_remote = tvb(24, 1):uint(), tvb(25, 1):uint()
    item:add(f.path_local_count, tvb(24, 1))
    item:add(f.path_remote_count, tvb(25, 1))
    local reserved = item:add(f.path_reserved, tvb(26, 2))
    if tvb(26, 2):uint() ~= 0 then
        reserved:add_proto_expert_info(e.malformed, "VPN path reserved field must be 0")
    end
    item:set_text(string.format("VPN path: %s %s <-> %s", path_roles[role] or ("role " .. role),
        ipv4_text(tvb, 4), ipv4_text(tvb, 8)))
    local offset = 28
    local function need(n, what)
        if offset + n > len then
            malformed(item, offset < len and tvb(offset) or nil,
                string.format("VPN path: %s needs %d octets at offset %d, %d left", what, n, offset, len - offset))
            return false
        end
        return true
    end
    if not need(5 * (n_local + n_remote), "traffic selectors") then
        return
    end
    offset = add_selectors(tvb, item, offset, n_local, f.path_local_ts, "local traffic selector")
    offset = add_selectors(tvb, item, offset, n_remote, f.path_remote_ts, "remote traffic selector")
    local function short_text(field, what)
        if not need(1, what .. " length") then
            return false
        end
        local n = tvb(offset, 1):uint()
        if not need(1 + n, what) then
            return false
        end
        if n == 0 then
            malformed(item, tvb(offset, 1), "VPN path: empty " .. what)
        else
            item:add(field, tvb(offset + 1, n))
        end
        offset = offset + 1 + n
        return true
    end
    if bit32.band(flags, 0x80) ~= 0 and not short_text(f.path_proposal, "IKE proposal") then
        return
    end
    if bit32.band(flags, 0x20) ~= 0 then
        if not need(5, "QoS block") then
            return
        end
        local dscp = item:add(f.path_dscp, tvb(offset, 1))
        if tvb(offset, 1):uint() > 63 then
            dscp:add_proto_expert_info(e.malformed, "DSCP is not a 6-bit value")
        end
        item:add(f.path_rate, tvb(offset + 1, 4))
        offset = offset + 5
        if not short_text(f.path_qos_name, "QoS class name") then
            return
        end
    end
    if not need(2, "wrapped keys length") then
        return
    end
    local wrapped = tvb(offset, 2):uint()
    item:add(f.path_wrapped_length, tvb(offset, 2))
    offset = offset + 2
    if not need(wrapped, "wrapped keys") then
        return
    end
    if wrapped > 0 then
        item:add(f.path_wrapped, tvb(offset, wrapped))
    end
    offset = offset + wrapped
    if offset ~= len then
        malformed(item, tvb(offset), string.format("VPN path: %d octets after the wrapped keys", len - offset))
    end
end

-- ------------------------------------------------------------------- extensions

-- One extension at `offset`; returns the offset after it, or nil when nothing
-- after it can be read.
local function dissect_extension(tvb, tree, offset)
    local total = tvb:len()
    local ext_type = tvb(offset, 1):uint()
    local name = extension_types[ext_type] or ((ext_type >= 128) and "Skippable extension" or "Unknown extension")
    if ext_type == 0 then -- RFC 5944 section 1.8: neither Length nor Data
        local item = tree:add(f.ext, tvb(offset, 1)):set_text("Extension: One-byte Padding (0)")
        item:add(f.ext_type, tvb(offset, 1))
        return offset + 1
    end
    local long = (ext_type == 36 or ext_type == 38) -- Type | Subtype/Reserved | Length (16)
    local header = long and 4 or 2
    if offset + header > total then
        malformed(tree, tvb(offset), string.format("extension %d at offset %d: its header runs past the message",
            ext_type, offset))
        return nil
    end
    local length = long and tvb(offset + 2, 2):uint() or tvb(offset + 1, 1):uint()
    if offset + header + length > total then
        local item = tree:add(f.ext, tvb(offset)):set_text(string.format("Extension: %s (%d)", name, ext_type))
        item:add(f.ext_type, tvb(offset, 1))
        malformed(item, tvb(offset), string.format("extension %d at offset %d: Length %d runs past the message (%d left)",
            ext_type, offset, length, total - offset - header))
        return nil
    end
    local item = tree:add(f.ext, tvb(offset, header + length))
    item:set_text(string.format("Extension: %s (%d)", name, ext_type))
    item:add(f.ext_type, tvb(offset, 1))
    local body = offset + header
    if long then
        if ext_type == 36 then
            item:add(f.auth_subtype, tvb(offset + 1, 1))
        else
            item:add(f.cvse_reserved, tvb(offset + 1, 1))
        end
        item:add(f.ext_length, tvb(offset + 2, 2))
    else
        item:add(f.ext_length, tvb(offset + 1, 1))
    end
    if ext_type == 32 or ext_type == 33 or ext_type == 34 or ext_type == 36 then
        if length < 4 then
            malformed(item, length > 0 and tvb(body, length) or nil, "authentication extension without an SPI")
        else
            item:add(f.auth_spi, tvb(body, 4))
            if length > 4 then
                item:add(f.authenticator, tvb(body + 4, length - 4))
            end
            if ext_type == 36 then
                local subtype = tvb(offset + 1, 1):uint()
                item:append_text(string.format(": %s, SPI %d", auth_subtypes[subtype] or ("subtype " .. subtype),
                    tvb(body, 4):uint()))
                if length < 20 then
                    item:add_proto_expert_info(e.malformed,
                        "generalized authentication Length " .. length .. ": must be at least 20 (RFC 4721 section 5)")
                end
            else
                item:append_text(string.format(": SPI %d", tvb(body, 4):uint()))
            end
        end
    elseif ext_type == 38 then
        if length < 6 then
            malformed(item, length > 0 and tvb(body, length) or nil, "CVSE shorter than its Vendor/Org-ID and type")
        else
            local vendor, cvse_type = tvb(body, 4):uint(), tvb(body + 4, 2):uint()
            item:add(f.cvse_vendor, tvb(body, 4))
            item:add(f.cvse_type, tvb(body + 4, 2))
            if vendor == VENDOR_ID and cvse_type == 1 then
                if length > 6 then
                    dissect_vpn_path(tvb(body + 6, length - 6):tvb(), item)
                else
                    malformed(item, nil, "VPN path CVSE without a value")
                end
            elseif length > 6 then
                item:add(f.vendor_value, tvb(body + 6, length - 6))
            end
        end
    elseif ext_type == 134 then
        if length < 8 then
            malformed(item, length > 0 and tvb(body, length) or nil, "NVSE shorter than its fixed part (8 octets)")
        else
            local vendor, nvse_type = tvb(body + 2, 4):uint(), tvb(body + 6, 2):uint()
            item:add(f.ext_reserved, tvb(body, 2))
            item:add(f.nvse_vendor, tvb(body + 2, 4))
            item:add(f.nvse_type, tvb(body + 6, 2))
            local value = (length > 8) and tvb(body + 8, length - 8):tvb() or nil
            if not dissect_nvse_value(vendor, nvse_type, value, item) and length > 8 then
                item:add(f.vendor_value, tvb(body + 8, length - 8))
            end
        end
    elseif ext_type == 131 then
        if length > 0 then
            item:add(f.nai, tvb(body, length))
            item:append_text(": " .. tvb(body, length):string())
        end
    elseif ext_type == 132 then
        if length > 0 then
            item:add(f.challenge, tvb(body, length))
        end
    else
        if ext_type < 128 then
            item:add_proto_expert_info(e.unknown_extension)
        end
        if length > 0 then
            item:add(f.ext_data, tvb(body, length))
        end
    end
    return body + length
end

local function dissect_extensions(tvb, tree, offset)
    if offset >= tvb:len() then
        return
    end
    local exts = tree:add(f.extensions, tvb(offset))
    while offset ~= nil and offset < tvb:len() do
        offset = dissect_extension(tvb, exts, offset)
    end
end

-- ------------------------------------------------------------------- binding messages

local FIXED = {[1] = 24, [2] = 20, [3] = 28, [4] = 28, [5] = 28}

local function dissect_binding(tvb, pinfo, tree)
    local len = tvb:len()
    pinfo.cols.protocol = "MobileIP"
    local item = tree:add(p, tvb())
    item:add(f.type, tvb(0, 1))
    if len < 8 then
        malformed(item, tvb(), "experimental message shorter than its 8-octet header")
        return len
    end
    local subtype, flags, status, vendor = tvb(1, 1):uint(), tvb(2, 1):uint(), tvb(3, 1):uint(), tvb(4, 4):uint()
    local name = subtypes[subtype] or ("sub-type " .. subtype)
    item:add(f.subtype, tvb(1, 1))
    local flag_item = item:add(f.flags, tvb(2, 1))
    flag_item:add(f.flag_a, tvb(2, 1))
    flag_item:add(f.flag_reserved, tvb(2, 1))
    local status_item = item:add(f.status, tvb(3, 1))
    item:add(f.vendor_id, tvb(4, 4))
    if vendor ~= VENDOR_ID then
        item:add_proto_expert_info(e.not_ours)
        pinfo.cols.info = string.format("Experimental message (Vendor/Org-ID %d, sub-type %d)", vendor, subtype)
        if len > 8 then
            item:add(f.ext_data, tvb(8))
        end
        return len
    end
    local fixed = FIXED[subtype]
    if fixed == nil then
        malformed(item, len > 8 and tvb(8) or nil, "sub-type " .. subtype .. " is not an aaa_vpn binding message")
        pinfo.cols.info = "aaa_vpn experimental message, unknown sub-type " .. subtype
        return len
    end
    item:set_text("aaa_vpn Mobile IP binding message: " .. name)
    if len < fixed then
        malformed(item, tvb(8), string.format("%s: %d octets, the fixed part is %d", name, len, fixed))
        pinfo.cols.info = name .. " (truncated)"
        return len
    end
    local acknowledged = (subtype == 3 or subtype == 5)
    if bit32.band(flags, acknowledged and 0x7f or 0xff) ~= 0 then
        flag_item:add_proto_expert_info(e.malformed, string.format("%s: undefined flag bits 0x%02x set", name,
            bit32.band(flags, acknowledged and 0x7f or 0xff)))
    end
    if status ~= 0 and subtype ~= 4 then
        status_item:add_proto_expert_info(e.malformed, name .. ": the status octet must be 0")
    end
    local home = ipv4_text(tvb, (subtype <= 2) and 8 or 12)
    local info
    if subtype == 1 then
        item:add(f.home_address, tvb(8, 4))
        item:add(f.target_address, tvb(12, 4))
        item:add_packet_field(f.identification, tvb(16, 8), ENC_TIME_NTP + ENC_BIG_ENDIAN)
        info = string.format("%s: HoA=%s Target=%s", name, home, ipv4_text(tvb, 12))
    elseif subtype == 2 then
        item:add(f.home_address, tvb(8, 4))
        item:add_packet_field(f.identification, tvb(12, 8), ENC_TIME_NTP + ENC_BIG_ENDIAN)
        info = string.format("%s: HoA=%s", name, home)
    else
        item:add(f.lifetime, tvb(8, 2))
        local reserved = item:add(f.reserved, tvb(10, 2))
        if tvb(10, 2):uint() ~= 0 then
            reserved:add_proto_expert_info(e.malformed, name .. ": the reserved field must be 0")
        end
        item:add(f.home_address, tvb(12, 4))
        item:add(f.care_of_address, tvb(16, 4))
        item:add_packet_field(f.identification, tvb(20, 8), ENC_TIME_NTP + ENC_BIG_ENDIAN)
        info = string.format("%s: HoA=%s CoA=%s Lifetime=%d", name, home, ipv4_text(tvb, 16), tvb(8, 2):uint())
        if subtype == 4 then
            info = info .. string.format(" Status=%d (%s)", status, statuses[status] or "unknown")
        end
    end
    pinfo.cols.info = info
    dissect_extensions(tvb, item, fixed)
    return len
end

-- ------------------------------------------------------------------- registration

local mip = Dissector.get("mip")

function p.dissector(tvb, pinfo, tree)
    if tvb:len() == 0 then
        return 0
    end
    if tvb(0, 1):uint() == 255 then
        return dissect_binding(tvb, pinfo, tree)
    end
    return mip:call(tvb, pinfo, tree)
end

-- The built-in dissector's NVSE table (keyed by Vendor/Org-ID): our NVSEs in
-- Registration Requests. "mip" has shown the Reserved field and the
-- Vendor/Org-ID already and hands over Vendor-NVSE-Type (2) and the value.
local nvse = Proto("aaa_vpn_nvse", "aaa_vpn NVSE")
function nvse.dissector(tvb, pinfo, tree)
    if tvb:len() < 2 then
        return 0
    end
    local nvse_type = tvb(0, 2):uint()
    local item = tree:add(p, tvb(), "aaa_vpn " .. (nvse_types[nvse_type] or ("NVSE type " .. nvse_type)))
    item:add(f.nvse_type, tvb(0, 2))
    local value = (tvb:len() > 2) and tvb(2):tvb() or nil
    if not dissect_nvse_value(VENDOR_ID, nvse_type, value, item) and value ~= nil then
        item:add(f.vendor_value, tvb(2))
    end
    return tvb:len()
end

local udp_port = DissectorTable.get("udp.port")
local registered = nil -- the range string this dissector is registered for

-- "434,40000-40002" -> true if `port` lies in it
local function in_range(range, port)
    for part in string.gmatch(range, "[^,]+") do
        local low, high = string.match(part, "^%s*(%d+)%s*%-%s*(%d+)%s*$")
        if low == nil then
            low = string.match(part, "^%s*(%d+)%s*$")
            high = low
        end
        if low ~= nil and tonumber(low) <= port and port <= tonumber(high) then
            return true
        end
    end
    return false
end

local function register_ports()
    if registered ~= nil and registered ~= "" then
        udp_port:remove(registered, p)
        if in_range(registered, MIP_PORT) then
            udp_port:add(MIP_PORT, mip) -- give the standard port back to the built-in dissector
        end
    end
    registered = tostring(p.prefs.ports)
    if registered ~= "" then
        udp_port:add(registered, p)
    end
end

function p.prefs_changed()
    register_ports()
end

register_ports()
DissectorTable.get("mip.nvse_ext"):add(VENDOR_ID, nvse)
