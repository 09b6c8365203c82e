# No partial (-target) plan may be applied to the default branch's infrastructure:
# what is applied must be the whole of what the branch says.
package gitops.target

import rego.v1

targeted contains flag if {
	some flag in input.run.plan_flags
	startswith(flag, "-target")
}

deny contains msg if {
	input.run.branch == input.run.default_branch
	count(targeted) > 0
	flags := concat(" ", sort(targeted))
	# concat, not sprintf: rego-cpp 1.5 quotes a string built by concat in sprintf
	msg := concat("", ["-target plans are not applied on the default branch (", input.run.default_branch, "): ", flags])
}
