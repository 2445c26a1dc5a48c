package routing

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The instance's nftables table, in nft syntax (interface wgmesh0; the table
// is named after the instance's interface, see NFTTableName):
//
//	table inet wgmesh_wgmesh0 {
//		counter strict_drops {}
//		counter egress_drops {}
//		set strict4  { type ipv4_addr; flags interval; elements = { 10.244.2.0/24, ... } }
//		set strict6  { type ipv6_addr; flags interval; elements = { fd00:10:244:2::/64, ... } }
//		set encrypt4 { type ipv4_addr; flags interval; elements = { 10.244.2.0/24, ... } }
//		set encrypt6 { type ipv6_addr; flags interval; elements = { fd00:10:244:2::/64, ... } }
//		chain prerouting {
//			type filter hook prerouting priority raw;
//			meta nfproto ipv4 iifname != "wgmesh0" ip saddr @strict4 counter name "strict_drops" drop
//			meta nfproto ipv6 iifname != "wgmesh0" ip6 saddr @strict6 counter name "strict_drops" drop
//		}
//		chain postrouting {
//			type filter hook postrouting priority raw;
//			meta nfproto ipv4 oifname != "wgmesh0" ip daddr @encrypt4 counter name "egress_drops" drop
//			meta nfproto ipv6 oifname != "wgmesh0" ip6 daddr @encrypt6 counter name "egress_drops" drop
//		}
//		chain forward {
//			type filter hook forward priority mangle;
//			oifname "wgmesh0" tcp flags syn / syn,rst tcp option maxseg size set rt mtu
//			iifname "wgmesh0" tcp flags syn / syn,rst tcp option maxseg size set rt mtu
//		}
//		chain output {
//			type filter hook output priority mangle;
//			oifname "wgmesh0" tcp flags syn / syn,rst tcp option maxseg size set rt mtu
//		}
//	}
//
// Ingress filter. A packet whose source is a remote node's pod CIDR can only
// legitimately come out of the tunnel; arriving on any other interface it
// crossed the wire in plaintext (or is spoofed) and is dropped. The chain
// hooks prerouting at priority raw (-300): before conntrack (-200), so
// dropped packets never create connection state, and before mangle, DNAT and
// every filter chain of other tables, so no other rule set sees the packet
// first. The drop is final for the packet no matter what other tables would
// do.
//
// Egress guard. A packet to a remote node's pod CIDR that must be encrypted
// (mesh.Desired.EncryptOnly) may only leave through the tunnel. The policy
// rule sends such packets into the tunnel, but other software can defeat it:
// a mark with our bit (the `not fwmark` rule skips the wgmesh table), a rule
// of higher priority, a route in another table. Postrouting sees every
// packet that leaves the host, forwarded or locally generated, after the
// output interface is final: DNAT happens at prerouting and output, and
// nothing re-routes at postrouting. So the verdict does not depend on the
// priority, and raw (-300) runs it before other tables' postrouting chains
// (SNAT allocating a port, NFQUEUE taking the packet away) handle a packet
// that is to be dropped anyway. A drop is final whatever other tables do.
// The device's own encrypted UDP goes to the peers' endpoints, which are
// never inside an EncryptOnly prefix (mesh.Derive keeps prefixes holding an
// endpoint or the API server out of it), so the guard never drops it.
//
// MSS clamp. Pods whose MTU exceeds the tunnel's (a CNI that ignores the Pod
// MTU) and clients that never see ICMP "fragmentation needed" stall on full
// sized segments. Rewriting the MSS option of SYNs (and SYN-ACKs) to what
// the route allows, like KubeSpan does, makes both ends send segments that
// fit: `rt mtu` is the smaller MTU of the routes towards the destination and
// back to the source, and the kernel only ever lowers an MSS. Forward clamps
// SYNs into the tunnel (a pod's, or a NodePort client's after DNAT), output
// the host's own. Between two current agents that covers both directions:
// the answering SYN-ACK is clamped on its way into the far end's tunnel.
// Forward also clamps SYNs coming out of the tunnel, for peers that do not
// clamp (an older agent during a rolling upgrade), so a client behind this
// node still learns an MSS that fits. Priority mangle (-150):
// after DNAT, so the route is the final one.
//
// Everything needs nf_tables with rt tcpmss and tcp option writes (Linux
// 4.14). If the kernel lacks a piece, the whole table fails to apply (see
// putFilter) and Apply reports it: strict mode never runs with half a table.

// nftSaddr and nftDaddr are the source and destination address offsets and
// lengths in the IPv4 and IPv6 headers.
var (
	nftSaddr = map[family]struct{ off, len uint32 }{v4: {12, 4}, v6: {8, 16}}
	nftDaddr = map[family]struct{ off, len uint32 }{v4: {16, 4}, v6: {24, 16}}
)

// A whole table goes to the kernel in one batch (one sendmsg), so that it
// applies atomically. A mesh of thousands of nodes makes that batch larger
// than the default socket send buffer (about 200 KiB), so the buffer is
// raised as the nft tool does, with SO_SNDBUFFORCE (root) or else as far as
// SO_SNDBUF allows. Within the batch, elements go in messages of
// nftElemChunk, far below the 64 KiB limit of one netlink attribute.
const (
	nftSndBuf    = 16 << 20
	nftElemChunk = 1024
)

func raiseSndBuf(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, nftSndBuf) != nil {
			// Best effort: a small mesh fits the default buffer anyway, and
			// a too large batch fails with an error naming the table.
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, nftSndBuf)
		}
	})
}

// addElements queues els for set in chunks.
func addElements(c *nftables.Conn, set *nftables.Set, els []nftables.SetElement, del bool) error {
	for len(els) > 0 {
		n := min(len(els), nftElemChunk)
		var err error
		if del {
			err = c.SetDeleteElements(set, els[:n])
		} else {
			err = c.SetAddElements(set, els[:n])
		}
		if err != nil {
			return fmt.Errorf("set %s: %w", set.Name, err)
		}
		els = els[n:]
	}
	return nil
}

func (k *kernel) nft() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(raiseSndBuf)}
	if k.ns != nsCurrent {
		opts = append(opts, nftables.WithNetNSFd(int(k.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables socket: %w", err)
	}
	return c, nil
}

func (k *kernel) nftTable() *nftables.Table {
	return &nftables.Table{Name: k.o.nftTableName(), Family: nftables.TableFamilyINet}
}

// observeFilter reads the instance's table into the model (nil when
// absent) and reports the legacy shared table when it is this instance's.
func (k *kernel) observeFilter() (*filter, string, error) {
	c, err := k.nft()
	if err != nil {
		return nil, "", err
	}
	name := k.o.nftTableName()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, "", fmt.Errorf("list nftables tables: %w", err)
	}
	var legacy string
	if slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == LegacyNFTTable }) {
		ours, err := k.legacyOurs(c)
		if err != nil {
			return nil, "", err
		}
		if ours {
			legacy = LegacyNFTTable
		}
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == name }) {
		return nil, legacy, nil
	}
	f, err := k.readFilter(c)
	return f, legacy, err
}

// legacyOurs reports whether the legacy shared table belongs to this
// instance: a rule of its prerouting chain carries, as user data, a rule
// signature naming our interface (see legacyOwner).
func (k *kernel) legacyOurs(c *nftables.Conn) (bool, error) {
	t := &nftables.Table{Name: LegacyNFTTable, Family: nftables.TableFamilyINet}
	rules, err := c.GetRules(t, &nftables.Chain{Name: nftChainIngress, Table: t})
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list rules of chain inet %s %s: %w", LegacyNFTTable, nftChainIngress, err)
	}
	sigs := make([]string, 0, len(rules))
	for _, r := range rules {
		sigs = append(sigs, string(r.UserData))
	}
	return legacyOwner(sigs, k.o.Interface), nil
}

// readFilter reads the instance's table, which exists.
func (k *kernel) readFilter(c *nftables.Conn) (*filter, error) {
	t := k.nftTable()
	name := t.Name
	f := &filter{Table: name}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains of table inet %s: %w", name, err)
	}
	for _, ch := range chains {
		if ch.Table.Name != name {
			continue
		}
		f.Chains = append(f.Chains, observedChain(ch))
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain inet %s %s: %w", name, ch.Name, err)
		}
		for _, r := range rules {
			f.Rules = append(f.Rules, nftRule{Chain: ch.Name, Sig: string(r.UserData)})
			// A table an earlier run put without objref: keep its way
			// of counting, and keep saying why.
			if slices.ContainsFunc(r.Exprs, func(e expr.Any) bool { _, ok := e.(*expr.Counter); return ok }) {
				k.noObjref.Store(true)
			}
		}
	}
	objs, err := c.GetObjects(t)
	if err != nil {
		return nil, fmt.Errorf("list objects of table inet %s: %w", name, err)
	}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok {
			f.Counters = append(f.Counters, co.Name)
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list sets of table inet %s: %w", name, err)
	}
	for _, s := range sets {
		ns := nftSet{Name: s.Name}
		// A set of unexpected name or type keeps family 0, which makes the
		// table's shape differ from any wanted one: it gets rebuilt.
		switch {
		case (s.Name == nftSet4 || s.Name == nftEncrypt4) && s.KeyType.Name == nftables.TypeIPAddr.Name && s.Interval:
			ns.Family = v4
		case (s.Name == nftSet6 || s.Name == nftEncrypt6) && s.KeyType.Name == nftables.TypeIP6Addr.Name && s.Interval:
			ns.Family = v6
		}
		if ns.Family != 0 {
			els, err := c.GetSetElements(s)
			if err != nil {
				return nil, fmt.Errorf("list elements of set inet %s %s: %w", name, s.Name, err)
			}
			ns.Ranges = rangesOfIntervals(intervalsOfElements(els))
		}
		f.Sets = append(f.Sets, ns)
	}
	f.normalize()
	return f, nil
}

// nftHooks names the hooks wgmesh's chains use.
var nftHooks = []struct {
	name string
	num  *nftables.ChainHook
}{
	{"prerouting", nftables.ChainHookPrerouting},
	{"forward", nftables.ChainHookForward},
	{"output", nftables.ChainHookOutput},
	{"postrouting", nftables.ChainHookPostrouting},
}

// observedChain models a chain of our table; one that is no base chain of
// type filter on a known hook gets Hook "?", so the table is rebuilt.
func observedChain(ch *nftables.Chain) nftChain {
	c := nftChain{Name: ch.Name, Hook: "?"}
	if ch.Type != nftables.ChainTypeFilter || ch.Hooknum == nil || ch.Priority == nil {
		return c
	}
	for _, h := range nftHooks {
		if *h.num == *ch.Hooknum {
			c.Hook = h.name
		}
	}
	c.Priority = int(*ch.Priority)
	return c
}

func hookNum(name string) (*nftables.ChainHook, error) {
	for _, h := range nftHooks {
		if h.name == name {
			return h.num, nil
		}
	}
	return nil, fmt.Errorf("unknown hook %q", name)
}

func intervalsOfElements(els []nftables.SetElement) []interval {
	var out []interval
	for _, e := range els {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			out = append(out, interval{Key: a, End: e.IntervalEnd})
		}
	}
	return out
}

func elementsOf(rs []ipRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, i := range intervals(rs) {
		out = append(out, nftables.SetElement{Key: i.Key.AsSlice(), IntervalEnd: i.End})
	}
	return out
}

func nftSetOf(t *nftables.Table, s nftSet) *nftables.Set {
	key := nftables.TypeIPAddr
	if s.Family == v6 {
		key = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, Name: s.Name, KeyType: key, Interval: true}
}

// putFilter (re)creates the whole table in one transaction: the add-delete-
// add sequence removes any previous version whatever state it is in, and the
// kernel applies the batch atomically, so there is no moment without the
// filter.
func (k *kernel) putFilter(f *filter) error {
	err := k.putFilterOnce(f)
	if err != nil && !k.noObjref.Load() && k.lacksObjref() {
		// The drops need no named counter: count them per rule instead
		// and say so in every Status (observe adds the warning). The
		// rules keep their signatures (user data): the same guard,
		// counted another way, so the next observe finds them current.
		k.noObjref.Store(true)
		k.o.logger().Warn(noObjrefWarning(k.o.nftTableName()))
		err = k.putFilterOnce(f)
	}
	if err != nil {
		if missing := k.probeFeatures(); missing != "" {
			return fmt.Errorf("%w: the kernel lacks %s (the table needs nf_tables base chains at prerouting, forward, "+
				"output and postrouting, counters, interval sets, rt tcpmss and tcp option writes: Linux 4.14 or later); "+
				"strict mode is NOT in force: traffic to remote pods is still routed only into the tunnel, but plaintext "+
				"packets from remote pod addresses arriving outside it are not dropped and nothing stops other software "+
				"sending pod traffic outside it; this node stays not ready until the kernel has it", err, missing)
		}
		return err
	}
	return nil
}

// noObjrefWarning says what a kernel without the objref expression costs
// the instance whose table is named table.
func noObjrefWarning(table string) string {
	return "the kernel lacks CONFIG_NFT_OBJREF (nft objref expression): the strict ingress filter and " +
		"the egress guard still drop every plaintext pod packet; their drops are counted in per-rule counters of " +
		"table inet " + table + " instead of the named counters " + nftCounter + " and " + nftCounterEgress
}

// counterRef is the named counter a guard rule counts in, or "" for a
// per-rule counter when the kernel lacks objref.
func (k *kernel) counterRef(name string) string {
	if k.noObjref.Load() {
		return ""
	}
	return name
}

// lacksObjref reports whether the kernel refuses a guard rule that counts
// in a named counter but takes the same rule with a per-rule counter: then
// CONFIG_NFT_OBJREF is what is missing.
func (k *kernel) lacksObjref() bool {
	return k.probe(k.guardProbe(nftCounterEgress)) != nil && k.probe(k.guardProbe("")) == nil
}

// putFilterOnce is one attempt of putFilter.
func (k *kernel) putFilterOnce(f *filter) error {
	c, err := k.nft()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: f.Table, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	chains := map[string]*nftables.Chain{}
	for _, ch := range f.Chains {
		hook, err := hookNum(ch.Hook)
		if err != nil {
			return fmt.Errorf("chain %s: %w", ch.Name, err)
		}
		prio := nftables.ChainPriority(ch.Priority)
		chains[ch.Name] = c.AddChain(&nftables.Chain{
			Name: ch.Name, Table: t, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: &prio,
		})
	}
	for _, name := range f.Counters {
		c.AddObj(&nftables.CounterObj{Table: t, Name: name})
	}
	sets := map[string]*nftables.Set{}
	for _, s := range f.Sets {
		set := nftSetOf(t, s)
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		if err := addElements(c, set, elementsOf(s.Ranges), false); err != nil {
			return err
		}
		sets[s.Name] = set
	}
	for _, r := range f.Rules {
		ch := chains[r.Chain]
		exprs, err := k.ruleExprs(r, sets)
		if ch == nil || err != nil {
			return fmt.Errorf("rule %q in chain %s: %w", r.Sig, r.Chain, errors.Join(err, errIf(ch == nil, "no such chain")))
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs, UserData: []byte(r.Sig)})
	}
	return c.Flush()
}

// probeFeatures finds which nf_tables feature the table needs is missing,
// after a put failed: it tries each in a scratch table of its own (probe)
// and names the first that fails ("" if all work).
func (k *kernel) probeFeatures() string {
	if _, err := k.nft(); err != nil {
		return "an nftables netlink socket (CONFIG_NETFILTER_NETLINK, CONFIG_NF_TABLES)"
	}
	steps := []struct {
		what string
		add  func(c *nftables.Conn, t *nftables.Table) error
	}{
		{"nf_tables filter chains at prerouting and postrouting (CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET)", func(c *nftables.Conn, t *nftables.Table) error {
			c.AddChain(probeChain(t, "pre", nftables.ChainHookPrerouting, nftables.ChainPriorityRaw))
			c.AddChain(probeChain(t, "post", nftables.ChainHookPostrouting, nftables.ChainPriorityRaw))
			return nil
		}},
		{"counters, interval sets and the objref expression (CONFIG_NFT_OBJREF)", k.guardProbe(k.counterRef(nftCounterEgress))},
		{"MSS clamping (rt tcpmss, tcp option write: nft_rt and nft_exthdr)", func(c *nftables.Conn, t *nftables.Table) error {
			ch := c.AddChain(probeChain(t, "fwd", nftables.ChainHookForward, nftables.ChainPriorityMangle))
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: mssExprs(expr.MetaKeyOIFNAME, k.o.Interface)})
			return nil
		}},
	}
	for _, st := range steps {
		if err := k.probe(st.add); err != nil {
			return fmt.Sprintf("%s (%v)", st.what, err)
		}
	}
	return ""
}

// probe puts what add adds into a scratch table of its own and deletes the
// table again: nil when the kernel took it, else the kernel's error.
func (k *kernel) probe(add func(c *nftables.Conn, t *nftables.Table) error) error {
	c, err := k.nft()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: k.o.nftTableName() + "_probe", Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t) // a table left by a killed probe
	c.AddTable(t)
	err = add(c, t)
	if err == nil {
		err = c.Flush()
	}
	if c, derr := k.nft(); derr == nil {
		c.DelTable(t)
		_ = c.Flush()
	}
	return err
}

// guardProbe adds one egress guard rule (guardExprs) counting in counter
// ("" for a per-rule counter), with the counter object and set it needs.
func (k *kernel) guardProbe(counter string) func(c *nftables.Conn, t *nftables.Table) error {
	return func(c *nftables.Conn, t *nftables.Table) error {
		ch := c.AddChain(probeChain(t, "post", nftables.ChainHookPostrouting, nftables.ChainPriorityRaw))
		c.AddObj(&nftables.CounterObj{Table: t, Name: nftCounterEgress})
		set := &nftables.Set{Table: t, Name: nftEncrypt4, KeyType: nftables.TypeIPAddr, Interval: true}
		if err := c.AddSet(set, nil); err != nil {
			return err
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: guardExprs(v4, expr.MetaKeyOIFNAME, k.o.Interface, nftDaddr[v4], set, counter)})
		return nil
	}
}

func probeChain(t *nftables.Table, name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: prio}
}

func errIf(cond bool, msg string) error {
	if cond {
		return errors.New(msg)
	}
	return nil
}

// ruleExprs turns a wanted rule's signature back into expressions. Only the
// signatures target makes are known; anything else is an error.
func (k *kernel) ruleExprs(r nftRule, sets map[string]*nftables.Set) ([]expr.Any, error) {
	iface := k.o.Interface
	for _, f := range []family{v4, v6} {
		switch r.Sig {
		case nftRuleSig(f, iface):
			if s := sets[nftSetName(f)]; s != nil {
				return guardExprs(f, expr.MetaKeyIIFNAME, iface, nftSaddr[f], s, k.counterRef(nftCounter)), nil
			}
		case nftEgressSig(f, iface):
			if s := sets[nftEncryptSetName(f)]; s != nil {
				return guardExprs(f, expr.MetaKeyOIFNAME, iface, nftDaddr[f], s, k.counterRef(nftCounterEgress)), nil
			}
		}
	}
	switch r.Sig {
	case nftMSSSig("oifname", iface):
		return mssExprs(expr.MetaKeyOIFNAME, iface), nil
	case nftMSSSig("iifname", iface):
		return mssExprs(expr.MetaKeyIIFNAME, iface), nil
	}
	return nil, errors.New("unknown rule or missing set")
}

// ifname is an interface name as the kernel compares it: IFNAMSIZ bytes,
// NUL padded.
func ifname(iface string) []byte {
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, iface)
	return name
}

// guardExprs is a drop rule of family f: packets whose interface (key
// IIFNAME or OIFNAME) is not iface and whose address at addr is in set are
// counted in the named counter (a per-rule counter if counter is "") and
// dropped (nftRuleSig, nftEgressSig).
func guardExprs(f family, key expr.MetaKey, iface string, addr struct{ off, len uint32 }, set *nftables.Set, counter string) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	if f == v6 {
		proto = unix.NFPROTO_IPV6
	}
	var count expr.Any = &expr.Objref{Type: int(unix.NFT_OBJECT_COUNTER), Name: counter}
	if counter == "" {
		count = &expr.Counter{}
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(iface)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addr.off, Len: addr.len},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		count,
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// TCP option kind and length of the MSS option, and the flags compared.
const (
	tcpOptMaxseg = 2
	tcpFlagSyn   = 0x02
	tcpFlagRst   = 0x04
)

// mssExprs is nftMSSSig: what nft compiles
// `<key> "<iface>" tcp flags syn / syn,rst tcp option maxseg size set rt mtu`
// to. rt tcpmss is in host byte order; the option is big endian.
func mssExprs(key expr.MetaKey, iface string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(iface)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagSyn | tcpFlagRst}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpFlagSyn}},
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Op: expr.ExthdrOpTcpopt, Type: tcpOptMaxseg, Offset: 2, Len: 2},
	}
}

// updateSet changes a set's elements in one transaction; deletions go first
// in the batch so a new range may overlap an old one, and the batch commits
// atomically, so no packet sees a set in between.
func (k *kernel) updateSet(table string, s nftSet, add, del []ipRange) error {
	c, err := k.nft()
	if err != nil {
		return err
	}
	set := nftSetOf(&nftables.Table{Name: table, Family: nftables.TableFamilyINet}, s)
	if err := addElements(c, set, elementsOf(del), true); err != nil {
		return err
	}
	if err := addElements(c, set, elementsOf(add), false); err != nil {
		return err
	}
	return c.Flush()
}

// deleteTable deletes the table name (family inet) with everything in it.
func (k *kernel) deleteTable(name string) error {
	c, err := k.nft()
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	return ignore(c.Flush(), unix.ENOENT)
}

// counters reads the drop counters (0 for a counter that does not exist).
func (k *kernel) counters() (dropCounts, error) {
	var d dropCounts
	c, err := k.nft()
	if err != nil {
		return d, err
	}
	for _, x := range []struct {
		name  string // the named counter
		chain string // whose rules count without objref
		n     *uint64
	}{{nftCounter, nftChainIngress, &d.Ingress}, {nftCounterEgress, nftChainEgress, &d.Egress}} {
		if k.noObjref.Load() {
			n, err := ruleCounters(c, k.nftTable(), x.chain)
			if err != nil {
				return d, err
			}
			*x.n = n
			continue
		}
		o, err := c.GetObject(&nftables.CounterObj{Table: k.nftTable(), Name: x.name})
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return d, fmt.Errorf("read counter inet %s %s: %w", k.o.nftTableName(), x.name, err)
		}
		if co, ok := o.(*nftables.CounterObj); ok {
			*x.n = co.Packets
		}
	}
	return d, nil
}

// ruleCounters sums the per-rule counters of chain in t: the drop counts of
// a table put without objref (0 for a chain that does not exist).
func ruleCounters(c *nftables.Conn, t *nftables.Table, chain string) (uint64, error) {
	rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list rules of chain inet %s %s: %w", t.Name, chain, err)
	}
	return sumCounters(rules), nil
}

// sumCounters adds up the packets of the counter expressions in rules.
func sumCounters(rules []*nftables.Rule) uint64 {
	var n uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				n += c.Packets
			}
		}
	}
	return n
}

// ruleIface extracts the tunnel interface from a rule signature of family f
// made by sig.
func ruleIface(rule string, f family, sig func(family, string) string) (string, bool) {
	prefix := sig(f, "")
	prefix = prefix[:strings.Index(prefix, `""`)]
	if !strings.HasPrefix(rule, prefix) {
		return "", false
	}
	q, err := strconv.QuotedPrefix(rule[len(prefix):])
	if err != nil {
		return "", false
	}
	name, err := strconv.Unquote(q)
	return name, err == nil && rule == sig(f, name)
}
