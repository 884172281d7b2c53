"""The event mapping: which provider events are used and what each sets in the CRM."""

from service.mapping.rules import EXTRACTORS, Mapping, MappingError, Rule, load_mapping

__all__ = ["EXTRACTORS", "Mapping", "MappingError", "Rule", "load_mapping"]
