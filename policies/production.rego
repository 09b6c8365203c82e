# Deleting or replacing an object in production needs its owners' sign-off.
#
# "Production" is a workspace or project whose name is, or contains as a word,
# prod, prd or production (prod, production, eu-prod, prod-db). Elsewhere, a delete
# is only reported, so reviewers see it in the policy section of the plan comment.
package gitops.production

import rego.v1

production_word := `(^|[^a-z0-9])(prod|prd|production)([^a-z0-9]|$)`

is_production if regex.match(production_word, lower(input.run.project.workspace))

is_production if regex.match(production_word, lower(input.run.project.name))

deleted contains change.address if {
	some change in input.resource_changes
	"delete" in change.change.actions
}

deny contains msg if {
	is_production
	some address in deleted
	msg := sprintf("%s would be deleted or replaced in production (%s): a policy owner must approve", [address, input.run.project.name])
}

warn contains msg if {
	not is_production
	some address in deleted
	msg := sprintf("%s would be deleted or replaced", [address])
}
