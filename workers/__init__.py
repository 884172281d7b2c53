"""relay worker side: rq jobs that deliver normalized updates to User.com."""
