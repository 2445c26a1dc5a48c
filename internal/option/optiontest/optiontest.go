// Package optiontest checks the errors of the option types' Validate
// methods in their table tests.
package optiontest

import (
	"errors"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/internal/option"
)

// Check reports on t unless err fits the case name: nil when field is "",
// else an error wrapping an *option.Error on field whose text contains want.
func Check(t testing.TB, name string, err error, field, want string) {
	t.Helper()
	if field == "" {
		if err != nil {
			t.Errorf("%s: Validate() = %v, want nil", name, err)
		}
		return
	}
	var oe *option.Error
	switch {
	case err == nil:
		t.Errorf("%s: Validate() = nil, want an error on %s", name, field)
	case !errors.As(err, &oe) || oe.Field != field:
		t.Errorf("%s: Validate() = %v, want an *option.Error on %s", name, err, field)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: Validate() = %q, want it to contain %q", name, err, want)
	}
}
