"""Train a few steps on a CIFAR-10 subset, evaluate, and export a Hub folder - the whole pipeline, small.

    python examples/train_and_evaluate.py --data-dir ../shared/data --out /tmp/mlan-example

``--data-dir`` takes any layout mlan_timm.data understands (torchvision CIFAR, ImageFolder, the shared
``cifar10/{train,test}.tar.gz``). The numbers this prints come from a smoke run: they are not a trained model.
"""
import argparse
import json
from pathlib import Path

from mlan_timm.tools import eval as meval
from mlan_timm.tools import export as mexport
from mlan_timm.tools import train as mtrain


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data-dir', required=True)
    p.add_argument('--model', default='mlan_resnet20_cifar10')
    p.add_argument('--out', default='runs/example')
    p.add_argument('--subset', type=int, default=512)
    p.add_argument('--epochs', type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)

    # 1. train: the paper recipe, shortened (the milestone at epoch 1 shows the lr drop). Run again, the example
    # continues the run in --out (nothing to do if it finished; more --epochs train on) instead of replacing it.
    resume = ['--resume'] if (out / 'run' / 'last.pth').is_file() else []
    rc = mtrain.main(['--model', args.model, '--data-dir', args.data_dir, '--subset', str(args.subset),
                      '--test-subset', '1000', '--epochs', str(args.epochs), '--decay-milestones', '1',
                      '--batch-size', '64', '--workers', '0', '--no-progress', '-o', str(out / 'run'), *resume])
    if rc:
        raise SystemExit(rc)

    # 2. evaluate the final weights on the (sub-sampled) test split
    ev_args = meval.build_parser().parse_args([
        '--model', args.model, '--weights', str(out / 'run' / 'model.safetensors'), '--data-dir', args.data_dir,
        '--subset', '1000', '--workers', '0'])
    res = meval.run_eval(ev_args)
    print(meval.format_table(res))
    (out / 'eval.json').write_text(json.dumps(res))

    # 3. export a Hub folder (config.json, model.safetensors, model card)
    folder = mexport.export_model(args.model, out / 'hub', weights=str(out / 'run' / 'model.safetensors'),
                                  eval_results=res, train_log=out / 'run' / 'log.jsonl')
    print(f'exported to {folder}; upload with: mlan-push --model {args.model} --hub-dir {out / "hub"}')


if __name__ == '__main__':
    main()
