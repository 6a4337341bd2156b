"""The basics every stage uses: data readers and writers, prompts, reward, engines, models,
outputs, metrics, seeding, distributed helpers, and the option groups and declarations."""
