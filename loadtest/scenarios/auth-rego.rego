# The policy of the auth-rego scenario: callers whose token grants tools:call may call echo and
# add; everything else is denied. It reads only the principal and the tool, so its decisions
# may be cached per (principal, tool).
package tollgate

import rego.v1

default decision := {"allow": false, "reason": "not_granted", "cacheable": true}

decision := {"allow": true, "reason": "granted", "cacheable": true} if {
	"tools:call" in input.principal.scopes
	input.tool in {"echo", "add"}
}
