"""What User.com accepts, from the seeds in shared/seeds (the spec of our outgoing calls)."""

from __future__ import annotations

import re

# Standard attributes User.com allows on update (usercom_update_user_by_custom_id.txt).
STANDARD_ATTRIBUTES = frozenset(
    {
        "assigned_to",
        "city",
        "company_id",
        "country",
        "email",
        "facebook_url",
        "first_name",
        "gender",
        "google_url",
        "gravatar_url",
        "last_name",
        "linkedin_url",
        "notifications",
        "phone_number",
        "region",
        "score",
        "status",
        "timezone",
        "twitter_url",
        "unsubscribed",
        "user_id",
    }
)
# Keys of an update body that are not attributes, and the fields of User.com's user record (seeds: the
# answer of an update), which the body's top level would set or refuse rather than create as custom
# attributes.
RESERVED_KEYS = frozenset(
    {
        "tags", "id", "custom_id", "user_id", "company_custom_id", "attributes",
        "browser", "browser_language", "chat_id", "companies", "created_at", "first_seen", "key", "last_contacted",
        "last_ip", "last_seen", "lists", "name", "os_type", "page_views", "resolution", "updated_at",
    }
)  # fmt: skip
NAME_MAX_LENGTH = 40  # first_name / last_name limit, documented
E164 = re.compile(r"^\+[1-9]\d{6,14}\Z")
CUSTOM_ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")
