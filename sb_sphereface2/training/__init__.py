"""Training: the recipe's ``SpeakerBrain`` (``brain``), per-iteration learning-rate and
margin schedules (``lr_schedule``, ``margin_scheduler``) and DDP helpers (``distributed``)."""
