"""Reading billing truth back from the providers' APIs: backfill (events), sync (snapshots of
customers and subscriptions) and reconcile (what the relay never received). Everything read
goes through the webhook path from the point after the signature (service.intake.read_event,
then the store's dedup and accept) on its own lane (keys.BACKFILL), below live traffic."""

DEFAULT_MAX_RPS = 20.0  # API reads a second: well under Stripe's read limit (100/s live, 25/s test mode)
PADDLE_MAX_RPS = 3.0  # Paddle allows 240 requests a minute per IP (4/s), shared with all on that host
LEMONSQUEEZY_MAX_RPS = 4.0  # Lemon Squeezy allows 300 API calls a minute (5/s)
MIN_RPS = 0.01  # --max-rps at its slowest: one read every 100 s
MAX_RPS = 1000.0  # --max-rps at its fastest: ten times Stripe's read limit; more is a typo
