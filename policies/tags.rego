# Resources that take tags must carry the tags their project declares.
#
# A project declares them on the default branch:
#   policy_data: {required_tags: [owner, cost-center]}
# Resources without a `tags` attribute (e.g. terraform_data) are not checked.
package gitops.tags

import rego.v1

required := object.get(input.run.project, ["data", "required_tags"], [])

has_tag(after, tag) if {
	tags := object.get(after, "tags", null)
	tags != null
	object.get(tags, tag, null) != null
}

deny contains msg if {
	some change in input.resource_changes
	some action in ["create", "update"]
	action in change.change.actions
	after := change.change.after
	"tags" in object.keys(after)
	missing := [tag | some tag in required; not has_tag(after, tag)]
	count(missing) > 0
	names := concat(", ", sort(missing))
	# concat, not sprintf: rego-cpp 1.5 quotes a string built by concat in sprintf
	msg := concat("", [change.address, " is missing required tags: ", names])
}
