# testfilter.awk condenses `go test -v` output of the e2e scenarios for CI:
# results and every "measured:" figure always, and the whole output of a test
# that failed, so a red run says why without the full log. Parallel tests
# interleave: a line belongs to the top-level test named by the last
# "=== RUN/CONT/NAME/PAUSE" header.
/^=== (RUN|CONT|NAME|PAUSE) / {
	split($3, p, "/"); cur = p[1]
	if ($2 == "RUN" && $3 !~ /\//) buf[cur] = ""
}
{ t = cur; if ($0 ~ /^--- /) t = $3; buf[t] = buf[t] $0 "\n" }
/^--- FAIL: / { print "----- full output of " $3 " -----"; printf "%s", buf[$3]; next }
/^(--- |PASS$|FAIL|ok )/ || /measured:/ { print }
