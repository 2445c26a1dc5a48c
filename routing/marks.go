package routing

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	mdnetlink "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Foreign users of the mark bit. The policy rule `not fwmark M/M lookup
// TABLE` sends every packet without wgmesh's bit through the wgmesh table;
// a packet that other software marks with the same bit skips it and leaves
// through the main table, in plaintext unless the egress guard drops it. The
// router looks for such software at every Apply (start and resync) and
// reports it as a Status warning: policy rules of others that match the bit
// (the bit means something to them), and nft rules in any table but ours
// that can set it — `meta mark set ...`, iptables-nft's MARK, CONNMARK
// --restore-mark and TPROXY --tproxy-mark. iptables-legacy rules live in
// x_tables, which nf_tables cannot list; the egress guard still catches
// their effect.

// foreignNFTRule is one rule of another table, as the mark scan reads it.
type foreignNFTRule struct {
	Family nftables.TableFamily
	Table  string
	Chain  string
	Handle uint64
	Exprs  []expr.Any
}

// markingRule is a rule the decoder found able to set mark bits.
type markingRule struct {
	foreignNFTRule
	Bits uint32
	// Unknown reports that the value comes from somewhere the decoder
	// cannot see (conntrack mark, a map, a packet field).
	Unknown bool
}

// foreignMarkRule reports whether r is someone else's policy rule that
// matches packets carrying our mark bit.
func (o Options) foreignMarkRule(r rule) bool {
	return !o.ownsRule(r) && r.Mark&r.Mask&o.FwMark != 0
}

// markWarnings describes the foreign rules (policy rules already filtered
// with foreignMarkRule, and nft rules already decoded) that use our bit.
func (o Options) markWarnings(rules []rule, nft []markingRule) []string {
	var out []string
	for _, r := range sortedRules(rules) {
		out = append(out, fmt.Sprintf("policy rule `%s` of other software matches mark bit %#x (wgmesh's --fwmark): "+
			"that software uses the same bit, and packets it marks skip table %d. Pick another --fwmark bit",
			r.spec(), o.FwMark, o.Table))
	}
	for _, m := range nft {
		if m.Bits&o.FwMark == 0 {
			continue
		}
		src := ""
		if m.Unknown {
			src = " (from a value wgmesh cannot read: conntrack mark, a map or a packet field)"
		}
		out = append(out, fmt.Sprintf("nft rule of other software in table %s %s, chain %s, handle %d can set mark bit %#x (wgmesh's --fwmark)%s: "+
			"packets it marks skip table %d and leave outside the tunnel, where the egress guard drops those to remote pods. "+
			"Pick another --fwmark bit or change that rule",
			familyName(m.Family), m.Table, m.Chain, m.Handle, o.FwMark, src, o.Table))
	}
	return out
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return fmt.Sprintf("family%d", f)
}

// decodeMarking runs markBits over rules and keeps those that can set a bit
// of mask.
func decodeMarking(rules []foreignNFTRule, mask uint32) []markingRule {
	var out []markingRule
	for _, r := range rules {
		if bits, unknown := markBits(r.Exprs); bits&mask != 0 {
			out = append(out, markingRule{foreignNFTRule: r, Bits: bits, Unknown: unknown})
		}
	}
	return out
}

// regSrc is where a register's value comes from.
type regSrc uint8

const (
	// srcConst: an immediate; the value is xor.
	srcConst regSrc = iota
	// srcMark: the packet's own mark, masked and xored.
	srcMark
	// srcUnknown: anything else (conntrack, a map, a packet field).
	srcUnknown
)

// regVal abstracts a 32-bit register as (src & and) ^ xor.
type regVal struct {
	src      regSrc
	and, xor uint32
}

var unknownReg = regVal{src: srcUnknown, and: ^uint32(0)}

// canSet is the set of bits a mark set from v can turn on: the xored ones,
// and with an unknown source every bit the mask lets through. A bit of the
// packet's own mark that is kept is not set by the rule.
func (v regVal) canSet() uint32 {
	if v.src == srcUnknown {
		return v.and | v.xor
	}
	return v.xor
}

// reg32 maps nf_tables register numbers to 32-bit slots: NFT_REG_1..4 (16
// bytes each) start at NFT_REG32_00 + 4*(n-1).
func reg32(r uint32) uint32 {
	if r >= unix.NFT_REG_1 && r <= unix.NFT_REG_4 {
		return unix.NFT_REG32_00 + 4*(r-unix.NFT_REG_1)
	}
	return r
}

// u32 reads up to 4 bytes of register data in host byte order, as nf_tables
// stores a mark.
func u32(b []byte) uint32 {
	var w [4]byte
	copy(w[:], b)
	return binary.NativeEndian.Uint32(w[:])
}

// markBits returns the mark bits one rule's expressions can turn on, and
// whether some of them come from a value the decoder cannot know. It
// follows the registers through immediates, mark loads and bitwise
// operations; any other expression that writes a register makes it
// unknown, and an expression type it does not know makes every register
// unknown, so it errs towards reporting.
func markBits(exprs []expr.Any) (bits uint32, unknown bool) {
	regs := map[uint32]regVal{}
	get := func(r uint32) regVal {
		if v, ok := regs[reg32(r)]; ok {
			return v
		}
		return unknownReg
	}
	set := func(r uint32, v regVal) {
		if r != unix.NFT_REG_VERDICT {
			regs[reg32(r)] = v
		}
	}
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Immediate:
			set(e.Register, regVal{src: srcConst, xor: u32(e.Data)})
		case *expr.Meta:
			switch {
			case e.SourceRegister && e.Key == expr.MetaKeyMARK:
				v := get(e.Register)
				bits |= v.canSet()
				unknown = unknown || (v.src == srcUnknown && v.canSet() != 0)
			case e.SourceRegister:
			case e.Key == expr.MetaKeyMARK:
				set(e.Register, regVal{src: srcMark, and: ^uint32(0)})
			default:
				set(e.Register, unknownReg)
			}
		case *expr.Bitwise:
			v := get(e.SourceRegister)
			m, x := u32(e.Mask), u32(e.Xor)
			if len(e.Mask) < 4 {
				// A narrower operation leaves the rest of the register
				// as it is only in the bytes it covers; be conservative.
				v = unknownReg
			}
			set(e.DestRegister, regVal{src: v.src, and: v.and & m, xor: (v.xor & m) ^ x})
		case *expr.Ct:
			if !e.SourceRegister {
				set(e.Register, unknownReg)
			}
		case *expr.Payload:
			if e.DestRegister != 0 {
				set(e.DestRegister, unknownReg)
			}
		case *expr.Lookup:
			if e.IsDestRegSet {
				set(e.DestRegister, unknownReg)
			}
		case *expr.Byteorder:
			set(e.DestRegister, unknownReg)
		case *expr.Exthdr:
			if e.DestRegister != 0 {
				set(e.DestRegister, unknownReg)
			}
		case *expr.Rt:
			set(e.Register, unknownReg)
		case *expr.Fib:
			set(e.Register, unknownReg)
		case *expr.Hash:
			set(e.DestRegister, unknownReg)
		case *expr.Numgen:
			set(e.Register, unknownReg)
		case *expr.Socket:
			set(e.Register, unknownReg)
		case *expr.Target:
			b, u := targetMarkBits(e)
			bits |= b
			unknown = unknown || (u && b != 0)
		case *expr.Cmp, *expr.Range, *expr.Counter, *expr.Objref, *expr.Verdict, *expr.Log, *expr.Limit,
			*expr.Quota, *expr.Match, *expr.NAT, *expr.Masq, *expr.Redir, *expr.Reject, *expr.Queue,
			*expr.Dynset, *expr.Connlimit, *expr.Notrack, *expr.TProxy, *expr.Dup:
			// They read registers or act on the packet, but write no
			// register and do not touch the mark.
		default:
			clear(regs)
		}
	}
	return bits, unknown
}

// xt target revisions and CONNMARK modes (linux/netfilter/xt_*.h).
const (
	xtConnmarkRestore = 2
)

// targetMarkBits decodes the iptables-nft targets that write the packet
// mark from their xt info (host byte order, as the kernel reads it):
//
//	MARK rev 2      xt_mark_tginfo2 {mark, mask}: mark = (mark &^ mask) ^ info.mark
//	CONNMARK rev 1  xt_connmark_tginfo1 {ctmark, ctmask, nfmask, mode u8}
//	CONNMARK rev 2  xt_connmark_tginfo2 {ctmark, ctmask, nfmask, shift_dir, shift_bits, mode u8}:
//	                restore: mark = (mark &^ nfmask) ^ (ctmark & ctmask)
//	TPROXY rev 0/1  xt_tproxy_target_info{,_v1} {mark_mask, mark_value, ...}:
//	                mark = (mark &^ mark_mask) ^ mark_value
//
// A revision or info it cannot read counts as able to set every bit.
func targetMarkBits(t *expr.Target) (bits uint32, unknown bool) {
	info, ok := xtInfoBytes(t.Info)
	all := ^uint32(0)
	word := func(i int) uint32 { return binary.NativeEndian.Uint32(info[4*i:]) }
	switch t.Name {
	case "MARK":
		if !ok || t.Rev != 2 || len(info) < 8 {
			return all, true
		}
		return word(0), false
	case "CONNMARK":
		var mode, shift byte
		switch {
		case ok && t.Rev == 1 && len(info) >= 13:
			mode = info[12]
		case ok && t.Rev == 2 && len(info) >= 15:
			shift, mode = info[13], info[14]
		default:
			return all, true
		}
		if mode != xtConnmarkRestore {
			return 0, false
		}
		if shift != 0 {
			return all, true
		}
		return word(1), true
	case "TPROXY":
		if !ok || t.Rev > 1 || len(info) < 8 {
			return all, true
		}
		return word(1), false
	}
	return 0, false
}

// xtInfoBytes returns the raw info of a target google/nftables has no type
// for (it keeps those as xt.Unknown).
func xtInfoBytes(i xt.InfoAny) ([]byte, bool) {
	switch v := i.(type) {
	case *xt.Unknown:
		if v == nil {
			return nil, false
		}
		return *v, true
	}
	return nil, false
}

// markScanEvery bounds how often the kernel system lists every nft rule
// when it cannot tell whether the rule set changed (see foreignNFT).
const markScanEvery = 20 * time.Second

// foreignNFT lists the rules of every nft table but ours that can set a
// bit of our mark. A large rule set (kube-proxy in iptables-nft mode) is
// costly to list, so the result is kept while the nf_tables generation id
// stays the same.
func (k *kernel) foreignNFT() ([]markingRule, error) {
	gen, genErr := k.nftGenID()
	k.mu.Lock()
	cached, ok := k.markScan, k.markScanOK
	fresh := ok && ((genErr == nil && gen == k.markGen) || (genErr != nil && time.Since(k.markScanAt) < markScanEvery))
	k.mu.Unlock()
	if fresh {
		return cached, nil
	}
	c, err := k.nft()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	var rules []foreignNFTRule
	for _, ch := range chains {
		if ch.Table == nil || (ch.Table.Family == nftables.TableFamilyINet && ch.Table.Name == k.o.nftTableName()) {
			continue
		}
		rs, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s %s %s: %w", familyName(ch.Table.Family), ch.Table.Name, ch.Name, err)
		}
		for _, r := range rs {
			rules = append(rules, foreignNFTRule{Family: ch.Table.Family, Table: ch.Table.Name, Chain: ch.Name, Handle: r.Handle, Exprs: r.Exprs})
		}
	}
	found := decodeMarking(rules, k.o.FwMark)
	k.mu.Lock()
	k.markScan, k.markScanOK, k.markGen, k.markScanAt = found, true, gen, time.Now()
	k.mu.Unlock()
	return slices.Clone(found), nil
}

// nftGenID asks nf_tables for its rule set generation id (NFT_MSG_GETGEN),
// which changes with every committed transaction.
func (k *kernel) nftGenID() (uint32, error) {
	cfg := &mdnetlink.Config{}
	if k.ns != nsCurrent {
		cfg.NetNS = int(k.ns)
	}
	conn, err := mdnetlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	msgs, err := conn.Execute(mdnetlink.Message{
		Header: mdnetlink.Header{
			Type:  mdnetlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: mdnetlink.Request,
		},
		// struct nfgenmsg: family, version, res_id.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := mdnetlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, fmt.Errorf("nf_tables generation id: no NFTA_GEN_ID in the answer")
}
