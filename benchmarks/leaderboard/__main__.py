"""python -m benchmarks.leaderboard --output-dir <run>/leaderboard"""
from benchmarks.leaderboard.stage import main

raise SystemExit(main())
