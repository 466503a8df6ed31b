"""Schedules: CPU schedule rules, MetaSchedule tuning and database handling."""
