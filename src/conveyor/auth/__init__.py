"""Users, organizations, passwords and the JWTs the API is called with (`AuthService` is the way in)."""
