"""`grocery tokens`: create, list and revoke API tokens (in the database of DATABASE_URL)."""

import argparse
import sys
import uuid

from service import tokens
from service.confinement import checked_token_roots
from service.db import make_engine, make_session_factory
from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grocery tokens", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a token and print it (shown this once only)")
    create.add_argument("--name", required=True, help="who or what uses it, e.g. team-produce")
    create.add_argument("--scopes", required=True, help=f"comma-separated, from {','.join(tokens.SCOPES)}")
    create.add_argument(
        "--roots",
        help="comma-separated folders its folder and manifest jobs may read, each inside GROCERY_INPUT_ROOTS "
        "(default: all of GROCERY_INPUT_ROOTS)",
    )
    create.add_argument(
        "--max-active-jobs", type=int, help="its queued plus running jobs (GROCERY_TOKEN_MAX_ACTIVE_JOBS)"
    )
    create.add_argument(
        "--max-active-files", type=int, help="files of its queued and running jobs (GROCERY_TOKEN_MAX_ACTIVE_FILES)"
    )
    commands.add_parser("list", help="tokens: id, name, scopes, created, revoked")
    secret = commands.add_parser("webhook-secret", help="print the secret that signs the webhooks of a token's jobs")
    secret.add_argument("token_id")
    revoke = commands.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session:
        if args.command == "create":
            try:
                roots = checked_token_roots(args.roots.split(","), settings) if args.roots is not None else None
                token, secret = tokens.create_token(
                    session,
                    name=args.name,
                    scopes=args.scopes.split(","),
                    roots=roots,
                    max_active_jobs=args.max_active_jobs,
                    max_active_files=args.max_active_files,
                )
            except ValueError as e:
                parser.error(str(e))
            session.commit()
            where = f"; roots {':'.join(roots)}" if roots else ""
            print(f"created token {token.id} ({token.name}; scopes {','.join(token.scopes)}{where})")
            print(f"its jobs' webhooks are signed with {token.webhook_secret} (`grocery tokens webhook-secret` again)")
            print("the token, shown this once only; keep it now:")
            print(secret)
        elif args.command == "list":
            for token in tokens.list_tokens(session):
                revoked = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
                roots = ":".join(token.roots) if token.roots else "(service roots)"
                print(f"{token.id}  {token.name:<24} {','.join(token.scopes):<28} {revoked:<8} {roots}")
        elif args.command == "webhook-secret":
            token = tokens.get_token(session, token_id=parsed_token_id(parser, args.token_id))
            if token is None:
                print(f"grocery tokens: no token {args.token_id}", file=sys.stderr)
                return 1
            print(token.webhook_secret)
        else:
            token_id = parsed_token_id(parser, args.token_id)
            if not tokens.revoke_token(session, token_id=token_id):
                print(f"grocery tokens: no active token {token_id}", file=sys.stderr)
                return 1
            session.commit()
            print(f"revoked {token_id}")
    return 0


def parsed_token_id(parser: argparse.ArgumentParser, text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        parser.error(f"{text!r} is not a token id")


if __name__ == "__main__":
    sys.exit(main())
