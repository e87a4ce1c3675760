from devserver.cli.main import run

run()
