package routing

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/mesh"
)

// strictKeyless is dual() with node-3 keyless in strict mode and node-5
// unmanaged, as Derive would put it: node-3's CIDRs are encrypt-only,
// node-5's are not.
func strictKeyless() mesh.Desired {
	d := with(dual(), unreachable("10.244.3.0/24", "node-3"), unreachable("fd00:10:244:3::/64", "node-3"),
		throw("10.244.5.0/24", "win-1"), throw("198.18.0.2/32", "node-2"))
	d.EncryptOnly = []netip.Prefix{pfx("10.244.2.0/24"), pfx("10.244.3.0/24"), pfx("10.244.4.0/24"),
		pfx("fd00:10:244:2::/64"), pfx("fd00:10:244:3::/64")}
	d.StrictSources = d.EncryptOnly
	return d
}

// TestEgressGuard: a packet to a remote pod CIDR that must be encrypted is
// dropped and counted on any interface but the tunnel; everything else
// (the tunnel itself, own and thrown destinations, the peers' endpoints)
// passes.
func TestEgressGuard(t *testing.T) {
	f := newTestFake(opts(nil))
	if err := f.Apply(context.Background(), strictKeyless()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dst, oif string
		drop     bool
	}{
		{"10.244.2.5", "eth0", true},            // a peer's pod, routed around the table
		{"fd00:10:244:2::5", "eth0", true},      // IPv6 too
		{"10.244.3.7", "eth1", true},            // keyless in strict mode: unreachable, and guarded
		{"fd00:10:244:3::7", "cni0", true},      // any interface
		{"10.244.2.5", DefaultInterface, false}, // through the tunnel
		{"10.244.1.5", "cni0", false},           // own pods
		{"10.244.5.5", "eth0", false},           // unmanaged: plaintext by design
		{"198.18.0.2", "eth0", false},           // a peer's endpoint: the device's encrypted UDP
		{"10.99.1.1", "eth0", false},            // not a pod CIDR
	} {
		if got := f.InjectEgress(addr(c.dst), c.oif); got != c.drop {
			t.Errorf("InjectEgress(%s, %s) = %v, want %v", c.dst, c.oif, got, c.drop)
		}
	}
	st := f.Status()
	if st.EgressDropped != 4 || st.IngressDropped != 0 {
		t.Errorf("Status drops: egress %d, ingress %d; want 4 and 0", st.EgressDropped, st.IngressDropped)
	}
	// The ingress filter and the guard count apart.
	if !f.Inject(addr("10.244.2.5"), "eth0") || f.Status().IngressDropped != 1 || f.Status().EgressDropped != 4 {
		t.Errorf("ingress drop miscounted: %+v", f.Status())
	}
}

// TestEgressGuardRepair: deleting the guard's chain or one of its rules by
// hand is repaired by the next Apply.
func TestEgressGuardRepair(t *testing.T) {
	f := newTestFake(opts(nil))
	ctx := context.Background()
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	want := f.Render()
	for _, line := range []string{
		"nft add chain inet wgmesh_wgmesh0 postrouting { type filter hook postrouting priority raw; }",
		`nft add rule inet wgmesh_wgmesh0 forward iifname "wgmesh0" tcp flags syn / syn,rst tcp option maxseg size set rt mtu`,
		"nft add counter inet wgmesh_wgmesh0 egress_drops",
		"nft add element inet wgmesh_wgmesh0 encrypt4 { 10.244.2.0/24, 10.244.4.0/24 }",
	} {
		if !f.Delete(line) {
			t.Fatalf("Delete(%q) matched nothing in:\n%s", line, want)
		}
		if f.InjectEgress(addr("10.244.2.5"), "eth0") && strings.Contains(line, "postrouting") {
			t.Errorf("guard still drops after %q was deleted", line)
		}
		if err := f.Apply(ctx, dual()); err != nil {
			t.Fatal(err)
		}
		if got := f.Render(); got != want {
			t.Errorf("Apply did not repair %q:\n%s", line, got)
		}
	}
	if !f.InjectEgress(addr("10.244.2.5"), "eth0") {
		t.Error("guard does not drop after the repairs")
	}
}

// TestDefaultMarkUpgrade: an agent upgraded from the old default mark
// 0x20000 replaces its rules: the new one exists before the old one goes,
// and nothing else changes.
func TestDefaultMarkUpgrade(t *testing.T) {
	h := testHost(DefaultInterface)
	old := opts(func(o *Options) { o.FwMark = 0x20000 })
	applyOn(t, h, config{"old-mark", old, dual()})
	if !strings.Contains(h.render(), "ip rule add pref 99 not fwmark 0x20000/0x20000 lookup 51820 proto 0x57\n") {
		t.Fatalf("old rule missing:\n%s", h.render())
	}
	o := DefaultOptions()
	w := h.observe(o)
	want, _ := o.target(dual(), w)
	var ops []string
	for _, op := range plan(o.Interface, w.Ours, want) {
		ops = append(ops, op.String())
	}
	wantOps := []string{
		"ip rule add pref 99 not fwmark 0x2000/0x2000 lookup 51820 proto 0x57",
		"ip -6 rule add pref 99 not fwmark 0x2000/0x2000 lookup 51820 proto 0x57",
		"ip rule del pref 99 not fwmark 0x20000/0x20000 lookup 51820 proto 0x57",
		"ip -6 rule del pref 99 not fwmark 0x20000/0x20000 lookup 51820 proto 0x57",
	}
	if !slices.Equal(ops, wantOps) {
		t.Errorf("upgrade ops:\n%s\nwant:\n%s", strings.Join(ops, "\n"), strings.Join(wantOps, "\n"))
	}
	applyOn(t, h, config{"dual", o, dual()})
	golden(t, "dual", h.render())
	f := &Fake{r: newRouter(o, fakeView{h, o}), sys: h}
	if got := f.Lookup(addr("10.244.2.5"), 0x20000); !strings.Contains(got, "dev wgmesh0") {
		t.Errorf("a packet with the old mark now goes %q, want the tunnel", got)
	}
	if got := f.Lookup(addr("10.244.2.5"), DefaultFwMark); !strings.Contains(got, "table main") {
		t.Errorf("an encrypted packet goes %q, want the main table", got)
	}
}

// imm is an immediate of a host-order u32.
func imm(reg, v uint32) *expr.Immediate {
	return &expr.Immediate{Register: reg, Data: binary.NativeEndian.AppendUint32(nil, v)}
}

func bitwise(src, dst, mask, xor uint32) *expr.Bitwise {
	return &expr.Bitwise{SourceRegister: src, DestRegister: dst, Len: 4,
		Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: binary.NativeEndian.AppendUint32(nil, xor)}
}

func loadMark(reg uint32) *expr.Meta { return &expr.Meta{Key: expr.MetaKeyMARK, Register: reg} }
func setMark(reg uint32) *expr.Meta {
	return &expr.Meta{Key: expr.MetaKeyMARK, Register: reg, SourceRegister: true}
}

func xtTarget(name string, rev uint32, words ...uint32) *expr.Target {
	var b []byte
	for _, w := range words {
		b = binary.NativeEndian.AppendUint32(b, w)
	}
	info := xt.Unknown(b)
	return &expr.Target{Name: name, Rev: rev, Info: &info}
}

func TestMarkBits(t *testing.T) {
	for _, c := range []struct {
		name    string
		exprs   []expr.Any
		bits    uint32
		unknown bool
	}{
		{"meta mark set meta mark or 0x20000", []expr.Any{loadMark(1), bitwise(1, 1, 0xfffdffff, 0x20000), setMark(1)}, 0x20000, false},
		{"meta mark set 0x4000 (kube-proxy)", []expr.Any{imm(1, 0x4000), setMark(1)}, 0x4000, false},
		{"meta mark set meta mark and 0xffff (clears only)", []expr.Any{loadMark(1), bitwise(1, 1, 0xffff, 0), setMark(1)}, 0, false},
		{"meta mark set meta mark xor 0x2000", []expr.Any{loadMark(1), bitwise(1, 1, ^uint32(0), 0x2000), setMark(1)}, 0x2000, false},
		{"meta mark set ct mark", []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1}, setMark(1)}, ^uint32(0), true},
		{"meta mark set ct mark and 0xff00", []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1}, bitwise(1, 1, 0xff00, 0), setMark(1)}, 0xff00, true},
		{"32-bit register alias of reg 1", []expr.Any{imm(unix.NFT_REG32_00, 0x2000), setMark(1)}, 0x2000, false},
		{"meta mark set from a map", []expr.Any{&expr.Lookup{SourceRegister: 1, DestRegister: 2, IsDestRegSet: true}, setMark(2)}, ^uint32(0), true},
		{"match on the mark only", []expr.Any{loadMark(1), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0x20, 0, 0}}}, 0, false},
		{"unknown expression invalidates registers", []expr.Any{imm(1, 0x1), &expr.Masq{}, &expr.Objref{}, setMark(1)}, 0x1, false},
		{"iptables MARK --set-xmark 0x20000/0x20000", []expr.Any{xtTarget("MARK", 2, 0x20000, 0x20000)}, 0x20000, false},
		{"iptables MARK --and-mark", []expr.Any{xtTarget("MARK", 2, 0, 0xffff0000)}, 0, false},
		{"iptables MARK rev 0", []expr.Any{xtTarget("MARK", 0, 0x1)}, ^uint32(0), true},
		{"CONNMARK --restore-mark --ctmask 0xff", []expr.Any{xtTarget("CONNMARK", 1, 0, 0xff, 0xffffffff, xtConnmarkRestore)}, 0xff, true},
		{"CONNMARK --save-mark", []expr.Any{xtTarget("CONNMARK", 1, 0, 0xffffffff, 0xffffffff, 1)}, 0, false},
		{"TPROXY --tproxy-mark 0x200/0xf00", []expr.Any{xtTarget("TPROXY", 1, 0xf00, 0x200, 0, 0, 0, 0, 0)}, 0x200, false},
		{"MASQUERADE", []expr.Any{xtTarget("MASQUERADE", 0, 0)}, 0, false},
	} {
		bits, unknown := markBits(c.exprs)
		if bits != c.bits || unknown != c.unknown {
			t.Errorf("%s: markBits = %#x, %v; want %#x, %v", c.name, bits, unknown, c.bits, c.unknown)
		}
	}
	// A CONNMARK rev 1 restore decoded from a real xt_connmark_tginfo1
	// layout (13 bytes, padded): the mode byte after three words.
	b := binary.NativeEndian.AppendUint32(nil, 0)
	b = binary.NativeEndian.AppendUint32(b, 0x2000)
	b = binary.NativeEndian.AppendUint32(b, 0xffffffff)
	b = append(b, xtConnmarkRestore, 0, 0, 0)
	info := xt.Unknown(b)
	if bits, _ := markBits([]expr.Any{&expr.Target{Name: "CONNMARK", Rev: 1, Info: &info}}); bits != 0x2000 {
		t.Errorf("CONNMARK restore: bits %#x, want 0x2000", bits)
	}
}

// TestMarkWarnings: other software's policy rules matching our bit and nft
// rules that can set it are Status warnings naming them; those of
// kube-proxy, Cilium, Tailscale or Istio with the default mark are not.
func TestMarkWarnings(t *testing.T) {
	o := DefaultOptions()
	h := testHost(o.Interface)
	h.rules = append(h.rules,
		rule{Family: v4, Priority: 5210, Mark: 0x80000, Mask: 0xff0000, Table: unix.RT_TABLE_MAIN}, // Tailscale
		rule{Family: v4, Priority: 9, Mark: 0x200, Mask: 0xf00, Table: 2004},                       // Cilium proxy
		rule{Family: v4, Priority: 133, Mark: 0x539, Mask: 0xffffffff, Table: 133},                 // Istio
		rule{Family: v6, Priority: 300, Mark: 0x2000, Mask: 0x2000, Table: 300},                    // someone on our bit
	)
	h.foreignNFTRules = []foreignNFTRule{
		{Family: nftables.TableFamilyIPv4, Table: "nat", Chain: "KUBE-MARK-MASQ", Handle: 3,
			Exprs: []expr.Any{xtTarget("MARK", 2, 0x4000, 0x4000)}},
		{Family: nftables.TableFamilyINet, Table: "neighbour", Chain: "pre", Handle: 7,
			Exprs: []expr.Any{loadMark(1), bitwise(1, 1, ^uint32(0x2000), 0x2000), setMark(1)}},
	}
	var logs bytes.Buffer
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	r := newRouter(o, fakeView{h, o})
	if err := r.Apply(context.Background(), dual()); err != nil {
		t.Fatal(err)
	}
	w := r.Status().Warnings
	if len(w) != 2 {
		t.Fatalf("warnings = %q, want two", w)
	}
	if !strings.Contains(w[0], "policy rule `pref 300 fwmark 0x2000/0x2000 lookup 300`") || !strings.Contains(w[0], "mark bit 0x2000") {
		t.Errorf("policy rule warning = %q", w[0])
	}
	if !strings.Contains(w[1], "table inet neighbour, chain pre, handle 7 can set mark bit 0x2000") {
		t.Errorf("nft rule warning = %q", w[1])
	}
	if !strings.Contains(logs.String(), "neighbour") {
		t.Errorf("the warnings were not logged:\n%s", logs.String())
	}

	// The guard's drops are logged once, naming the likely cause.
	f := &Fake{r: r, sys: h}
	f.InjectEgress(addr("10.244.2.5"), "eth0")
	logs.Reset()
	if err := r.Apply(context.Background(), dual()); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "egress guard dropped"); n != 1 || !strings.Contains(logs.String(), "neighbour") {
		t.Errorf("egress log lines %d, want 1 naming the rule:\n%s", n, logs.String())
	}
	f.InjectEgress(addr("10.244.2.5"), "eth0")
	logs.Reset()
	if err := r.Apply(context.Background(), dual()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "egress guard dropped") {
		t.Errorf("egress log not rate-limited:\n%s", logs.String())
	}

	// With another mark none of them matters.
	o2 := opts(func(o *Options) { o.FwMark = 0x1000000 })
	r2 := newRouter(o2, fakeView{h, o2})
	if err := r2.Apply(context.Background(), dual()); err != nil {
		t.Fatal(err)
	}
	if w := r2.Status().Warnings; len(w) != 0 {
		t.Errorf("warnings with mark 0x1000000: %q", w)
	}
}

// FuzzMarkBits checks the decoder against a concrete evaluation: whatever
// the expressions (built from the fuzz input), the mark and conntrack mark,
// every bit the rule turns on is among those markBits reports.
func FuzzMarkBits(f *testing.F) {
	f.Add([]byte{1, 1, 0, 2, 0, 0, 0, 3, 1, 1, 0xff, 0xfd, 0xff, 0xff, 0, 2, 0, 0, 4, 1}, uint32(0), uint32(0))
	f.Add([]byte{5, 1, 4, 1}, uint32(0x10), uint32(0xffffffff))
	f.Add([]byte{6, 2, 0x00, 0x20, 0, 0, 0x00, 0x20, 0, 0}, uint32(0), uint32(0))
	f.Add([]byte{7, 1, 0, 0, 0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 2}, uint32(0), uint32(0x2000))
	f.Fuzz(func(t *testing.T, prog []byte, mark, ctmark uint32) {
		exprs := fuzzExprs(prog)
		bits, _ := markBits(exprs)
		got := evalMark(exprs, mark, ctmark)
		if on := got &^ mark; on&^bits != 0 {
			t.Fatalf("rule turned on %#x (mark %#x -> %#x), markBits reported only %#x for %v", on, mark, got, bits, exprs)
		}
	})
}

// fuzzExprs builds expressions from bytes: an opcode, then operands.
func fuzzExprs(b []byte) []expr.Any {
	var out []expr.Any
	next := func() byte {
		if len(b) == 0 {
			return 0
		}
		v := b[0]
		b = b[1:]
		return v
	}
	word := func() uint32 { return uint32(next()) | uint32(next())<<8 | uint32(next())<<16 | uint32(next())<<24 }
	regs := []uint32{1, 2, unix.NFT_REG32_00, unix.NFT_REG32_01, unix.NFT_REG32_04}
	reg := func() uint32 { return regs[int(next())%len(regs)] }
	for len(b) > 0 && len(out) < 32 {
		switch next() % 10 {
		case 0:
			out = append(out, imm(reg(), word()))
		case 1:
			out = append(out, loadMark(reg()))
		case 2:
			out = append(out, setMark(reg()))
		case 3:
			out = append(out, bitwise(reg(), reg(), word(), word()))
		case 4:
			out = append(out, &expr.Ct{Key: expr.CtKeyMARK, Register: reg()})
		case 5:
			out = append(out, &expr.Payload{DestRegister: reg(), Len: 4})
		case 6:
			out = append(out, xtTarget("MARK", uint32(next()%3), word(), word()))
		case 7:
			t := xtTarget("CONNMARK", 1, word(), word(), word())
			info := append(*t.Info.(*xt.Unknown), next(), 0, 0, 0)
			t.Info = &info
			out = append(out, t)
		case 8:
			out = append(out, xtTarget("TPROXY", uint32(next()%2), word(), word()))
		case 9:
			// Raw info bytes of any length: the decoder must not panic.
			n := int(next() % 20)
			raw := make([]byte, 0, n)
			for range n {
				raw = append(raw, next())
			}
			info := xt.Unknown(raw)
			names := []string{"MARK", "CONNMARK", "TPROXY"}
			out = append(out, &expr.Target{Name: names[int(next())%3], Rev: uint32(next() % 3), Info: &info})
		}
	}
	return out
}

// evalMark runs exprs on a packet with mark and a connection with ctmark,
// the way the kernel would for the subset fuzzExprs makes, and returns the
// final mark. Registers start with random garbage.
func evalMark(exprs []expr.Any, mark, ctmark uint32) uint32 {
	rng := rand.New(rand.NewPCG(uint64(mark), uint64(ctmark)))
	regs := map[uint32]uint32{}
	get := func(r uint32) uint32 {
		r = reg32(r)
		if _, ok := regs[r]; !ok {
			regs[r] = rng.Uint32()
		}
		return regs[r]
	}
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Immediate:
			regs[reg32(e.Register)] = u32(e.Data)
		case *expr.Meta:
			if e.SourceRegister {
				mark = get(e.Register)
			} else {
				regs[reg32(e.Register)] = mark
			}
		case *expr.Bitwise:
			regs[reg32(e.DestRegister)] = get(e.SourceRegister)&u32(e.Mask) ^ u32(e.Xor)
		case *expr.Ct:
			regs[reg32(e.Register)] = ctmark
		case *expr.Payload:
			regs[reg32(e.DestRegister)] = rng.Uint32()
		case *expr.Target:
			info, _ := xtInfoBytes(e.Info)
			w := func(i int) uint32 { return binary.NativeEndian.Uint32(info[4*i:]) }
			switch {
			case e.Name == "MARK" && e.Rev == 2 && len(info) >= 8:
				mark = mark&^w(1) ^ w(0)
			case e.Name == "CONNMARK" && e.Rev == 1 && len(info) >= 13 && info[12] == xtConnmarkRestore:
				mark = mark&^w(2) ^ ctmark&w(1)
			case e.Name == "TPROXY" && e.Rev <= 1 && len(info) >= 8:
				mark = mark&^w(0) ^ w(1)
			}
		}
	}
	return mark
}

// TestPrivilegedMarkScan: in a namespace, an nft rule of another table that
// ORs our bit into the mark is reported at the next Apply, with its table,
// chain and handle, and the report goes when the rule does (the scan cache
// follows the nf_tables generation id). A policy rule on our bit is
// reported too.
func TestPrivilegedMarkScan(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	r, k := l.router(DefaultOptions())
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatal(err)
	}
	if w := r.Status().Warnings; len(w) != 0 {
		t.Fatalf("warnings on a clean namespace: %q", w)
	}
	gen1, err := k.nftGenID()
	if err != nil {
		t.Fatalf("nf_tables generation id: %v", err)
	}
	nft := func(args ...string) {
		l.run("ip", append([]string{"netns", "exec", l.ns, "nft"}, args...)...)
	}
	nft("add", "table", "ip", "neighbour")
	nft("add", "chain", "ip", "neighbour", "pre", "{ type filter hook prerouting priority mangle; }")
	nft("add", "rule", "ip", "neighbour", "pre", "ip", "saddr", "10.244.1.0/24", "meta", "mark", "set", "meta", "mark", "or", "0x2000")
	nft("add", "rule", "ip", "neighbour", "pre", "meta", "mark", "set", "0x4000")
	if gen2, err := k.nftGenID(); err != nil || gen2 == gen1 {
		t.Errorf("generation id %d -> %d (%v): want a change after nft add", gen1, gen2, err)
	}
	l.ip("rule", "add", "pref", "300", "fwmark", "0x2000/0x2000", "lookup", "300")
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatal(err)
	}
	w := r.Status().Warnings
	if len(w) != 2 || !strings.Contains(w[0], "pref 300 fwmark 0x2000/0x2000 lookup 300") ||
		!strings.Contains(w[1], "table ip neighbour, chain pre, handle ") || !strings.Contains(w[1], "mark bit 0x2000") {
		t.Errorf("warnings = %q, want the policy rule and the nft rule (only the one setting 0x2000)", w)
	}
	nft("delete", "table", "ip", "neighbour")
	l.ip("rule", "del", "pref", "300")
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatal(err)
	}
	if w := r.Status().Warnings; len(w) != 0 {
		t.Errorf("warnings after the neighbour left: %q", w)
	}
}

// TestPrivilegedEgressGuard: with a foreign mark sending a locally
// generated packet to a remote pod around the wgmesh table, the kernel
// drops it in postrouting and counts it; unmarked, it goes into the tunnel.
func TestPrivilegedEgressGuard(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	r, k := l.router(DefaultOptions())
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatal(err)
	}
	// The feature probe (run when a put fails) finds everything here and
	// leaves nothing behind.
	if missing := k.probeFeatures(); missing != "" {
		t.Errorf("probeFeatures = %q on a kernel that took the table", missing)
	}
	if out := l.run("ip", "netns", "exec", l.ns, "nft", "list", "tables"); strings.Contains(out, "_probe") {
		t.Errorf("probe table left behind:\n%s", out)
	}
	// A plaintext route to node-2's pods in main, as a host-gw CNI has.
	l.ip("route", "add", "10.244.2.0/24", "via", "198.18.0.2")
	ping := func(mark string) {
		args := []string{"netns", "exec", l.ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1"}
		if mark != "" {
			args = append(args, "-m", mark)
		}
		_ = exec.Command("ip", append(args, "10.244.2.5")...).Run()
	}
	ping("")
	if n := r.Status().EgressDropped; n != 0 {
		t.Errorf("EgressDropped = %d after unmarked pings into the tunnel, want 0", n)
	}
	ping(fmt.Sprint(DefaultFwMark))
	if n := r.Status().EgressDropped; n < 3 {
		t.Errorf("EgressDropped = %d after pings carrying the mark bit, want >= 3", n)
	}
	// The peer's endpoint is never guarded, marked or not.
	before := r.Status().EgressDropped
	_ = exec.Command("ip", "netns", "exec", l.ns, "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-m", fmt.Sprint(DefaultFwMark), "198.18.0.2").Run()
	if n := r.Status().EgressDropped; n != before {
		t.Errorf("pings to the underlay peer were counted as egress drops: %d -> %d", before, n)
	}
}
