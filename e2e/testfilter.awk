# testfilter.awk condenses `go test -v` output of the e2e scenarios for CI:
# results and every "measured:" figure always, and the whole output of a test
# that failed, so a red run says why without the full log.
/^=== RUN   / && $3 !~ /\// { buf = "" }
{ buf = buf $0 "\n" }
/^--- FAIL: / { print "----- full output of " $3 " -----"; printf "%s", buf; next }
/^(--- |PASS$|FAIL|ok )/ || /measured:/ { print }
