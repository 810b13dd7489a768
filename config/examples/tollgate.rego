# An example tollgate policy (servers[].rego, see README.md "Rego policies"): readers may call
# only `echo`; tools marked destructiveHint only admins; admins anything; everyone may list.
package tollgate

import rego.v1

default decision := {
	"allow": false,
	"reason": "not_allowed",
	"message": "Your role does not allow this tool.",
}

# Admins may do anything. The decision depends only on (principal, server, method, tool):
# cacheable.
decision := {"allow": true, "reason": "admin", "cacheable": true} if {
	"admin" in input.principal.roles
}

# Listing and the session's housekeeping are allowed for everyone (the lists are filtered by
# servers[].tools, not here).
decision := {"allow": true, "cacheable": true} if {
	not "admin" in input.principal.roles
	input.method in {"initialize", "notifications/initialized", "ping", "tools/list", "prompts/list", "resources/list"}
}

# Readers may call echo, unless the upstream marks it destructive. Not cacheable: it reads
# the annotations, which the (principal, server, method, tool) key does not cover.
decision := {"allow": true, "reason": "reader_echo"} if {
	not "admin" in input.principal.roles
	"reader" in input.principal.roles
	input.method == "tools/call"
	input.tool == "echo"
	not input.annotations.destructiveHint
}

# Anyone else calling a destructive tool gets a specific reason and message.
decision := {
	"allow": false,
	"reason": "destructive_needs_admin",
	"message": "This tool changes data; only an admin may call it.",
} if {
	not "admin" in input.principal.roles
	input.method == "tools/call"
	input.annotations.destructiveHint
}
