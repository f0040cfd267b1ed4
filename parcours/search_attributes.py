"""The search attributes Parcours sets on its workflows (SPEC §5).

Other clusters must register these names with these types before Parcours runs there:
`temporal operator search-attribute create --name ParcoursJourney --type Keyword` and so on.
"""

from temporalio.common import SearchAttributeKey

JOURNEY = SearchAttributeKey.for_keyword("ParcoursJourney")
PROFILE = SearchAttributeKey.for_keyword("ParcoursProfile")
NODE = SearchAttributeKey.for_keyword("ParcoursNode")
JOURNEY_VERSION = SearchAttributeKey.for_int("ParcoursJourneyVersion")
CAMPAIGN = SearchAttributeKey.for_keyword("ParcoursCampaign")

ALL = (JOURNEY, PROFILE, NODE, JOURNEY_VERSION, CAMPAIGN)
# Set by Temporal itself on workflows a schedule starts.
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
