"""Skills: ``skills/<name>/SKILL.md`` folders of instructions (and scripts) for recurring tasks.

The format is Anthropic's Agent Skills (YAML front matter with ``name`` and
``description``), with the requirement spellings of OpenClaw (``metadata.openclaw``, or the
older ``metadata.clawdbot``) and nanobot (``metadata.nanobot``), so their skills work here:
``skillfile`` parses it, ``catalog`` finds skills and checks their requirements, ``archive``
and ``installer`` install them, ``prompt`` lists the available ones for the model. The
``skill_exec`` tool (``claw_worker/tools/skills.py``) runs their scripts; ``clawctl skills``
(``claw_worker/cli/skills_cmd.py``) manages them.
"""
